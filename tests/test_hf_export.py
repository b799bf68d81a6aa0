"""fairseq -> Hugging Face export: the converter's own verification passes, an independent comparison of
every hidden state agrees (remote code and, for plain-HuBERT layouts, transformers' HubertModel), and a
tampered export fails verification loudly."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from export_helpers import build_model, save_checkpoint
from mert_fairseq.checkpoint.model_loading import load_mert_model
from mert_fairseq.export import convert
from mert_fairseq.export.convert import VerificationError, convert_checkpoint, verify_export

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5

VARIANTS = {
    # name: (layout, model overrides, checkpoint options)
    "95m": ("95m", {}, {}),
    "330m_fp16": ("330m", {}, {"half": True}),
    "95m_cqt": ("95m", {"feature_extractor_cqt": True, "feature_extractor_cqt_bins": 84}, {}),
    "330m_cqt_normalize": ("330m", {"feature_extractor_cqt": True, "feature_extractor_cqt_bins": 84},
                           {"normalize": True}),
    "95m_deepnorm": ("95m", {"deepnorm": True}, {}),
    # CNN width == D: fairseq has no post_extract_proj (exported as an exact identity projection)
    "95m_no_proj": ("95m", {"conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"}, {}),
    "95m_stable_cnn_ln": ("95m", {"do_cnn_feat_stable_layernorm": True}, {}),
}
PLAIN_HUBERT = {"95m", "330m_fp16", "95m_no_proj"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every variant converted once: name -> (checkpoint path, folder, converter result)."""
    root = tmp_path_factory.mktemp("hf_export")
    out = {}
    for i, (name, (layout, overrides, ckpt_opts)) in enumerate(VARIANTS.items()):
        ckpt = save_checkpoint(build_model(layout, seed=i, **overrides), root / f"{name}.pt", **ckpt_opts)
        folder = root / f"{name}_hf"
        out[name] = (ckpt, folder, convert_checkpoint(ckpt, folder))
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_converter_verification_passes(exports, name):
    ckpt, folder, result = exports[name]
    report = json.loads((folder / "verification.json").read_text())
    assert report["passed"] and not report["failures"], report["failures"]
    loaders = {c["loader"] for c in report["checks"]}
    assert loaders == ({"AutoModel", "HubertModel"} if name in PLAIN_HUBERT else {"AutoModel"})
    assert report["hubert_compatible"] == (name in PLAIN_HUBERT)
    assert all(c["max_abs_diff"] <= ATOL for c in report["checks"])
    # 3 music clips + tone and noise + equal-length batch + padded batch with attention mask
    assert len([c for c in report["checks"] if c["loader"] == "AutoModel"]) == 6
    assert any(c["input"].startswith("padded batch") for c in report["checks"] if c["loader"] == "AutoModel")
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "configuration_mert.py",
                                                  "modeling_mert.py", "cqt.py", "cnn_features.py",
                                                  "preprocessor_config.json",
                                                  "verification.json"}
    # the shipped CQT is the training model's file itself, not a twin of it
    assert (folder / "cqt.py").read_text() == (ROOT / "mert_fairseq/models/teachers/cqt.py").read_text()
    assert (folder / "cnn_features.py").read_text() == (ROOT / "mert_fairseq/models/cnn_features.py").read_text()
    inputs = [c["input"] for c in report["checks"] if c["loader"] == "AutoModel"]
    assert sum(i.startswith("music") for i in inputs) == 3 and any(i.startswith("tone + noise") for i in inputs)


def _fairseq_states(model, wav):
    with torch.no_grad():
        states, _ = model.extract_hidden_states(wav)
        raw_last, _ = model.extract_features(wav, output_layer=len(model.encoder.layers))
    return states, raw_last


@pytest.mark.parametrize("name", list(VARIANTS))
def test_independent_comparison_of_every_hidden_state(exports, name):
    from transformers import AutoModel, HubertModel

    ckpt, folder, _ = exports[name]
    model, _ = load_mert_model(ckpt)
    g = torch.Generator().manual_seed(123)
    wav = 0.2 * torch.randn(2, 20003, generator=g)  # odd length, batch of 2, not one of the converter's inputs
    ref, raw_last = _fairseq_states(model.float().eval(), wav)
    assert len(ref) == model.cfg.encoder_layers + 1

    hf = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
    assert type(hf).__name__ == "MERTModel"
    with torch.no_grad():
        out = hf(wav, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref)
    for i, (a, b) in enumerate(zip(out.hidden_states, ref)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        assert (a - b).abs().max() <= ATOL, (i, float((a - b).abs().max()))
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)

    if name in PLAIN_HUBERT:
        hub = HubertModel.from_pretrained(str(folder)).eval()
        with torch.no_grad():
            out = hub(wav, output_hidden_states=True)
        assert (out.last_hidden_state - ref[-1]).abs().max() <= ATOL
        for i, (a, b) in enumerate(zip(out.hidden_states[:-1], ref[:-1])):
            assert (a - b).abs().max() <= ATOL, (i, float((a - b).abs().max()))
        # transformers 5 (pre-LN): the last hidden state is the last layer before the final LayerNorm
        last_ref = ref[-1] if not model.cfg.layer_norm_first else raw_last
        if model.cfg.layer_norm_first and torch.equal(out.hidden_states[-1], out.last_hidden_state):
            last_ref = ref[-1]  # transformers 4.x layout
        assert (out.hidden_states[-1] - last_ref).abs().max() <= ATOL


def test_folder_contents_config_and_preprocessor(exports):
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    for name, (ckpt, folder, result) in exports.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "mert" and config["architectures"] == ["MERTModel"]
        assert config["auto_map"] == {"AutoConfig": "configuration_mert.MERTConfig",
                                      "AutoModel": "modeling_mert.MERTModel"}
        assert config["do_stable_layer_norm"] == ("330m" in name)
        assert config["feat_extract_norm"] == ("layer" if "330m" in name else "group")
        assert config["feature_extractor_cqt"] == ("cqt" in name)
        assert config["deepnorm"] == ("deepnorm" in name)
        assert config["conv_pos_batch_norm"] is False  # the original MERT remote code needs it (transformers >= 4.48)
        fe = Wav2Vec2FeatureExtractor.from_pretrained(str(folder))
        assert fe.sampling_rate == 24000 and fe.feature_size == 1
        assert fe.do_normalize == ("normalize" in name)  # = task.normalize of the checkpoint
        assert fe.return_attention_mask is True  # padded batches equal single clips only with the mask
        keys = set(load_file(str(folder / "model.safetensors")))
        assert not any(k.startswith(("final_proj", "label_embs", "encoder_cqt", "logit_temp")) for k in keys)
        assert "masked_spec_embed" in keys
        assert "encoder.pos_conv_embed.conv.parametrizations.weight.original0" in keys
        if name in PLAIN_HUBERT:  # one safetensors file, exactly HubertModel's parameter names
            assert keys == set(HubertModel(HubertConfig(**{k: v for k, v in config.items()
                                                           if k not in ("auto_map", "model_type")})).state_dict())


def test_weights_are_fp32_even_from_fp16_checkpoint(exports):
    ckpt, folder, _ = exports["330m_fp16"]
    state = torch.load(ckpt, weights_only=False)["model"]
    assert state["encoder.layers.0.fc1.weight"].dtype == torch.float16
    weights = load_file(str(folder / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in weights.values())
    assert torch.equal(weights["encoder.layers.0.feed_forward.intermediate_dense.weight"],
                       state["encoder.layers.0.fc1.weight"].float())


def copy_files(src: Path, dst: Path) -> None:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())


def test_tampered_export_fails_verification(exports, tmp_path):
    ckpt, folder, _ = exports["95m"]
    bad = tmp_path / "bad_hf"
    copy_files(folder, bad)
    weights = load_file(str(bad / "model.safetensors"))
    # (a constant shift would vanish in the following LayerNorm: perturb channels differently)
    weights["encoder.layers.1.feed_forward.output_dense.bias"] += 0.05 * torch.randn(
        weights["encoder.layers.1.feed_forward.output_dense.bias"].shape, generator=torch.Generator().manual_seed(0))
    save_file(weights, str(bad / "model.safetensors"), metadata={"format": "pt"})
    model, _ = load_mert_model(ckpt)
    with pytest.raises(VerificationError, match=r"hidden state 2 differs from fairseq by .* > 1e-05"):
        verify_export(model, bad)
    report = json.loads((bad / "verification.json").read_text())
    assert not report["passed"] and report["failures"]
    # hidden states 0 and 1 are untouched by layer 2's weights: the report localises the problem
    first = report["checks"][0]["max_abs_diff_per_hidden_state"]
    assert first[0] <= ATOL and first[1] <= ATOL and first[2] > ATOL
    # the command line says FAILED and exits 1
    assert convert.main(["--checkpoint_path", str(ckpt), "--pytorch_dump_folder", str(bad), "--verify-only"]) == 1


def test_missing_weight_fails_loading_check(exports, tmp_path):
    ckpt, folder, _ = exports["330m_fp16"]
    bad = tmp_path / "missing_hf"
    copy_files(folder, bad)
    weights = load_file(str(bad / "model.safetensors"))
    del weights["encoder.layers.0.attention.q_proj.weight"]
    save_file(weights, str(bad / "model.safetensors"), metadata={"format": "pt"})
    model, _ = load_mert_model(ckpt)
    with pytest.raises(VerificationError, match="did not load the weights cleanly.*q_proj"):
        verify_export(model, bad)


def test_layout_check_of_the_original_call_form(exports, tmp_path, capsys):
    ckpt95, _, _ = exports["95m"]
    ckpt330, _, _ = exports["330m_fp16"]
    assert convert.main(["--checkpoint_path", str(ckpt95), "--pytorch_dump_folder", str(tmp_path / "x"),
                         "--expect", "mert_large", "--no-verify"]) == 2
    assert "does not match mert_large" in capsys.readouterr().out
    assert convert.main(["--checkpoint_path", str(ckpt330), "--pytorch_dump_folder", str(tmp_path / "y"),
                         "--expect", "mert_large", "--no-verify"]) == 0
    assert "matches mert_large" in capsys.readouterr().out


def test_shell_script_original_call_form(exports, tmp_path):
    ckpt, _, _ = exports["95m"]
    out = tmp_path / "script_hf"
    proc = subprocess.run(["bash", str(ROOT / "scripts/convert_HF_script.sh"), "default", "mert", "mert_base",
                           str(ckpt), str(out)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "matches mert_base" in proc.stdout and "PASSED" in proc.stdout
    assert json.loads((out / "verification.json").read_text())["passed"]


def _imports(tree: ast.AST) -> set:
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return modules | {n.module.split(".")[0] for n in ast.walk(tree)
                      if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module}


def test_remote_code_is_self_contained():
    """The copied files import only the standard library, torch, numpy, transformers and each other; the one
    import of this package is the fallback (inside try/except, which transformers' requirement check skips)
    that lets modeling_mert.py also run as a module of the package."""
    allowed = {"__future__", "collections", "logging", "math", "typing", "numpy", "torch", "transformers"}
    for name, source in convert.REMOTE_CODE_FILES.items():
        tree = ast.parse(source.read_text())
        guarded = [n for t in ast.walk(tree) if isinstance(t, ast.Try) for n in t.body + sum(
            (h.body for h in t.handlers), [])]
        outside = ast.Module(body=[n for n in tree.body if not isinstance(n, ast.Try)], type_ignores=[])
        assert _imports(outside) <= allowed, (name, _imports(outside))
        guarded_imports = {(n.level, n.module) for n in guarded if isinstance(n, ast.ImportFrom)}
        assert guarded_imports <= {(1, "cqt"), (0, "mert_fairseq.models.teachers.cqt"), (1, "cnn_features"),
                                   (0, "mert_fairseq.models.cnn_features")}, (name, guarded_imports)
        relative = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1}
        assert {f"{m}.py" for m in relative} <= set(convert.REMOTE_CODE_FILES), (name, relative)


def test_remote_model_padding_and_attentions(exports):
    from transformers import AutoModel

    _, folder, _ = exports["330m_cqt_normalize"]
    hf = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
    g = torch.Generator().manual_seed(0)
    a, b = 0.1 * torch.randn(1, 16000, generator=g), 0.1 * torch.randn(1, 9001, generator=g)
    batch = torch.zeros(2, 16000)
    batch[0], batch[1, :9001] = a[0], b[0]
    mask = torch.zeros(2, 16000, dtype=torch.long)
    mask[0], mask[1, :9001] = 1, 1
    with torch.no_grad():
        out = hf(batch, attention_mask=mask, output_attentions=True)
        alone = hf(b).last_hidden_state
    n = alone.shape[1]
    assert (out.last_hidden_state[1, :n] - alone[0]).abs().max() < 1e-4
    assert len(out.attentions) == hf.config.num_hidden_layers
    att = out.attentions[0]
    assert att.shape == (2, hf.config.num_attention_heads, out.last_hidden_state.shape[1],
                         out.last_hidden_state.shape[1])
    assert att[1, :, :, n:].abs().max() == 0  # padded frames get no attention
    assert torch.allclose(att.sum(-1), torch.ones(()), atol=1e-5)
