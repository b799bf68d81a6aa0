"""Half precision beyond the training step: online probes, validation and feature extraction under
`common.bf16` and `common.fp16` (fairseq casts the model; the probe and the extractor feed the audio in the
model's dtype). fp16 on CPU needs `common.fp16_no_flatten_grads=true` (fairseq allocates its flattened fp32
copy on CUDA); the GPU versions and fairseq's loss scaling are in tests/test_gpu.py."""
import sys

import numpy as np
import pytest
import torch

from export_helpers import build_model, save_checkpoint
from training_runs import metric, train

PRECISION = {"bf16": ["common.bf16=true"], "fp16": ["common.fp16=true", "common.fp16_no_flatten_grads=true"]}


@pytest.fixture(scope="module")
def probe_csv(tmp_path_factory):
    """Held-out clips of the demo corpus generator (8 clips of 2 s) and their metadata.csv."""
    from mert_fairseq.prep.demo_corpus import make_demo_corpus

    out = tmp_path_factory.mktemp("probe")
    make_demo_corpus(out, num_clips=8, seconds=2.0, seed=1)
    return out / "metadata.csv"


@pytest.mark.parametrize("precision", sorted(PRECISION))
def test_half_precision_run_probes_validates_and_extracts(precision, tone_data, probe_csv, tmp_path):
    from mert_fairseq.checkpoint.safe_load import load_checkpoint_state
    from mert_fairseq.evaluation.features import load_feature_extractor

    run = tmp_path / "run"
    log = train(tone_data, run, *PRECISION[precision], f"task.probe_csv={probe_csv}", "task.probe_interval_updates=2",
                "task.probe_tasks='timbre,mode'", "++task.probe_folds=2", "optimization.max_update=3",
                "dataset.validate_interval_updates=2", "common.log_interval=1")
    assert "done training" in log
    timbre = metric(log, "train_inner", "probe_timbre")
    assert len(timbre) == 3 and all(0.0 <= v <= 1.0 for v in timbre), log[-3000:]
    assert log.count("online probe (") == 2  # updates 0 and 2
    assert len(metric(log, "valid", "loss")) >= 2 and all(np.isfinite(metric(log, "valid", "loss")))
    state = load_checkpoint_state(run / "checkpoints" / "checkpoint_last.pt")
    assert state["cfg"]["common"][precision] is True  # trained in half precision
    wav = np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1
    full = load_feature_extractor(checkpoint=str(run / "checkpoints" / "checkpoint_last.pt")).extract(wav)
    half = load_feature_extractor(checkpoint=str(run / "checkpoints" / "checkpoint_last.pt"),
                                  dtype={"bf16": "bfloat16", "fp16": "float16"}[precision]).extract(wav)
    assert full.shape == half.shape == (3, 74, 64) and half.dtype == np.float32
    assert np.isfinite(half).all() and np.abs(half - full).max() < 0.05 * np.abs(full).max()


@pytest.mark.parametrize("dtype,tolerance", [("bfloat16", 0.03), ("float16", 0.005)])
def test_feature_extraction_in_half_precision_matches_fp32(dtype, tolerance, tmp_path):
    """Checkpoint and HF folder, weights in bf16/fp16: within `tolerance` x max |feature| of fp32."""
    from mert_fairseq.evaluation.features import load_feature_extractor
    from mert_fairseq.export.convert import convert_checkpoint

    ckpt = save_checkpoint(build_model("95m", seed=3), tmp_path / "ckpt.pt")
    convert_checkpoint(ckpt, tmp_path / "hf", verify=False)
    wav = (0.3 * np.sin(2 * np.pi * 220 * np.arange(24000) / 24000)).astype(np.float32)
    for source in ({"checkpoint": str(ckpt)}, {"hf_model": str(tmp_path / "hf")}):
        ref = load_feature_extractor(**source).extract(wav)
        extractor = load_feature_extractor(dtype=dtype, **source)
        assert next(extractor.model.parameters()).dtype == getattr(torch, dtype)
        feats = extractor.extract(wav)
        assert feats.dtype == np.float32 and feats.shape == ref.shape
        assert np.abs(feats - ref).max() < tolerance * np.abs(ref).max(), source
    with pytest.raises(ValueError, match="dtype 'half'"):
        load_feature_extractor(checkpoint=str(ckpt), dtype="half")


def _positional_convs():
    """The positional conv of the fairseq model and of the exported HF model (32 channels, kernel 8, 4 groups:
    the test model's), same weights, fp32; each maps B x T x D -> B x T x D."""
    from mert_fairseq.export.configuration_mert import MERTConfig
    from mert_fairseq.export.modeling_mert import MERTPositionalConvEmbedding
    from mert_fairseq.models.transformer_encoder import SamePad, WeightNormConv1d

    torch.manual_seed(0)
    fairseq_conv = WeightNormConv1d(32, 32, kernel_size=8, padding=4, groups=4)
    hf = MERTPositionalConvEmbedding(MERTConfig(hidden_size=32, num_conv_pos_embeddings=8,
                                                num_conv_pos_embedding_groups=4))
    with torch.no_grad():
        hf.conv.weight = fairseq_conv.weight_v * (fairseq_conv.weight_g / fairseq_conv.weight_v.norm(dim=(0, 1), keepdim=True))
        hf.conv.bias.copy_(fairseq_conv.bias)
    fairseq = torch.nn.Sequential(Transpose(), fairseq_conv, SamePad(8), Transpose())
    return {"fairseq": fairseq, "hf": hf}


class Transpose(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


@pytest.mark.parametrize("mode", ["bf16 input", "bf16 autocast, fp32 input"])
def test_positional_conv_in_cpu_bf16_matches_fp32_and_compiles_to_one_graph(mode):
    """torch 2.9's oneDNN bf16 grouped conv1d with an even kernel is wrong on AMX CPUs (error ~ the output),
    also under `torch.autocast("cpu", bfloat16)` with an fp32 input; both positional convs run it in fp32 on
    the CPU in bf16 (within 3 % of max |output| of fp32) without a graph break."""
    x = torch.randn(2, 50, 32)
    for name, conv in _positional_convs().items():
        with torch.no_grad():
            ref = conv(x)
            if mode == "bf16 input":
                conv.to(torch.bfloat16)  # as `common.bf16` / `--dtype bfloat16` cast the model
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.startswith("bf16 autocast")):
                inp = x.bfloat16() if mode == "bf16 input" else x
                out = conv(inp)
                compiled = torch.compile(conv, fullgraph=True, backend="aot_eager", dynamic=False)(inp)
        torch._dynamo.reset()
        assert out.dtype == compiled.dtype == torch.bfloat16 and out.shape == ref.shape == (2, 50, 32), name
        for y in (out, compiled):
            assert (y.float() - ref).abs().max() < 0.03 * ref.abs().max(), (name, mode)


def test_extract_features_script_takes_dtype(tmp_path):
    import soundfile as sf
    import subprocess

    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ckpt = save_checkpoint(build_model("95m", seed=3), tmp_path / "ckpt.pt")
    sf.write(tmp_path / "a.wav", np.zeros(24000, np.float32) + 0.01, 24000, subtype="FLOAT")
    out = subprocess.run([sys.executable, str(root / "scripts" / "extract_features.py"), str(tmp_path / "a.wav"),
                          "--output-dir", str(tmp_path / "feats"), "--checkpoint", str(ckpt), "--dtype", "bfloat16",
                          "--reduce", "mean"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert np.load(tmp_path / "feats" / "a.npy").shape == (3, 32)
