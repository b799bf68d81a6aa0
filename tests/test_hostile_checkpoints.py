"""A checkpoint carrying a pickle payload is refused by every entry point that loads checkpoints, with a
message naming the file, and its code never runs (the marker file it would create stays absent)."""
import importlib.util
import os
from pathlib import Path

import pytest
import soundfile as sf
import torch

from export_helpers import build_model, checkpoint_dict
from mert_fairseq.checkpoint.safe_load import UnsafeCheckpointError, load_checkpoint_state

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def hostile(tmp_path) -> dict:
    """A real tiny MERT checkpoint with a payload object added to it."""
    marker = tmp_path / "PAYLOAD_RAN"
    state = checkpoint_dict(build_model("95m"), ["encodec_0", "encodec_1"])
    state["extra_state"] = {"note": Payload(marker)}
    path = tmp_path / "hostile.pt"
    torch.save(state, path)
    return {"path": path, "marker": marker}


def _assert_refused(message: str, hostile: dict) -> None:
    assert str(hostile["path"]) in message and "refused" in message, message
    assert not hostile["marker"].exists(), "the payload ran"


def test_the_payload_is_real(hostile):
    """Control: an unsafe load would run it (so the tests below can fail)."""
    torch.load(hostile["path"], weights_only=False)
    assert hostile["marker"].exists()


def test_load_checkpoint_state_and_load_mert_model_refuse(hostile):
    from mert_fairseq.checkpoint.model_loading import load_mert_model

    for load in (load_checkpoint_state, load_mert_model):
        with pytest.raises(UnsafeCheckpointError) as err:
            load(hostile["path"])
        _assert_refused(str(err.value), hostile)


def test_fairseq_resume_and_restore_file_loader_refuses(hostile):
    """fairseq's load_checkpoint_to_cpu (resume and checkpoint.restore_file), even with torch's
    environment switch that would otherwise turn weights_only off."""
    from fairseq import checkpoint_utils

    from mert_fairseq.tasks import fairseq_patches

    fairseq_patches.install()  # as MERTPretrainingTask.setup_task does

    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with pytest.raises(UnsafeCheckpointError) as err:
            checkpoint_utils.load_checkpoint_to_cpu(str(hostile["path"]))
    finally:
        del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
    _assert_refused(str(err.value), hostile)


def test_convert_to_hf_refuses(hostile, tmp_path, capsys):
    from mert_fairseq.export.convert import main

    assert main(["--checkpoint_path", str(hostile["path"]), "--pytorch_dump_folder", str(tmp_path / "hf")]) != 0
    _assert_refused(capsys.readouterr().out, hostile)
    assert not (tmp_path / "hf").exists()


def test_extract_features_refuses(hostile, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("extract_features_script", ROOT / "scripts/extract_features.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sf.write(tmp_path / "a.wav", torch.zeros(24000).numpy(), 24000)
    try:
        code = script.main([str(tmp_path / "a.wav"), "--output-dir", str(tmp_path / "out"),
                            "--checkpoint", str(hostile["path"])])
        message = capsys.readouterr()
        message = message.out + message.err
    except UnsafeCheckpointError as exc:
        code, message = 1, str(exc)
    assert code != 0
    _assert_refused(message, hostile)


def test_kmeans_with_mert_features_refuses(hostile, tmp_path):
    from mert_fairseq.prep.kmeans_features import FeatureSpec, make_extractor

    with pytest.raises(UnsafeCheckpointError) as err:
        make_extractor(FeatureSpec(kind="mert", checkpoint=str(hostile["path"]), layer=1))
    _assert_refused(str(err.value), hostile)


def test_pretrained_weights_of_the_model_refuse(hostile):
    from tiny_models import tiny_model

    with pytest.raises(UnsafeCheckpointError) as err:
        tiny_model(pretrained_weights=str(hostile["path"]))
    _assert_refused(str(err.value), hostile)
