"""Convert a MERT fairseq checkpoint (mert-fairseq or the original MERT) to a Hugging Face folder, and
verify the result numerically against the fairseq model.

The folder holds:
  config.json               MERTConfig (model_type "mert", auto_map -> the remote code below); its field
                            names are HubertConfig's, so plain-HuBERT layouts also load with HubertModel
  configuration_mert.py     this project's remote code (copied from mert_fairseq/export)
  modeling_mert.py
  cqt.py                    the fairseq model's CQT, mert_fairseq/models/teachers/cqt.py itself (the CQT
                            input front end imports it as a sibling module)
  cnn_features.py           mert_fairseq/models/cnn_features.py itself: padded batches clip by clip
  model.safetensors         fp32 weights, named as transformers' HubertModel names them
  preprocessor_config.json  Wav2Vec2FeatureExtractor: sampling_rate = task.sample_rate, do_normalize =
                            task.normalize, return_attention_mask true (padded batches need it)
  verification.json         the report of `verify_export`
  README.md                 model card (model_card.py): training recipe, input, layers, loading, verification

Verification loads the folder with `AutoModel.from_pretrained(folder, trust_remote_code=True)` (and with
`HubertModel` where the layout is plain HuBERT), runs fairseq and HF models in eval mode and fp32 on
several inputs (music from the demo corpus's synthesiser and a tone-plus-noise clip) and compares every
hidden state; any difference above `atol` (DEFAULT_ATOL) fails.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from mert_fairseq.common.atomic_files import atomic_open, atomic_write_text
from mert_fairseq.export.model_card import write_model_card
from mert_fairseq.models.cnn_features import receptive_field

logger = logging.getLogger(__name__)

EXPORT_DIR = Path(__file__).resolve().parent
# name in the exported folder -> source file (the CQT is the training model's own file, not a copy of it)
REMOTE_CODE_FILES: Dict[str, Path] = {
    "configuration_mert.py": EXPORT_DIR / "configuration_mert.py",
    "modeling_mert.py": EXPORT_DIR / "modeling_mert.py",
    "cqt.py": EXPORT_DIR.parent / "models" / "teachers" / "cqt.py",
    "cnn_features.py": EXPORT_DIR.parent / "models" / "cnn_features.py",
}
AUTO_MAP = {"AutoConfig": "configuration_mert.MERTConfig", "AutoModel": "modeling_mert.MERTModel"}
DEFAULT_ATOL = 1e-5
_CONFIG_NOISE = ("id2label", "label2id", "_name_or_path", "problem_type", "dtype", "torch_dtype",
                 "chunk_size_feed_forward")

# fairseq activation_fn -> transformers activation name
_ACTIVATION_NAMES = {"gelu": "gelu", "gelu_accurate": "gelu_new", "gelu_fast": "gelu_new", "relu": "relu",
                     "tanh": "tanh", "linear": "linear", "swish": "swish"}

# fairseq key (regex) -> HF key; None = dropped (pretraining-only heads and teachers)
_KEY_RULES: List[Tuple[str, Optional[str]]] = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
    (r"mask_emb", "masked_spec_embed"),
    (r"encoder\.pos_conv\.0\.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"encoder\.pos_conv\.0\.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"encoder\.pos_conv\.0\.bias", "encoder.pos_conv_embed.conv.bias"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"(final_proj|final_projs|label_embs_concat|logit_temp_list|target_glu|encoder_cqt_model|encoder_mel_model"
     r"|feature_extractor_cqt|online_targets)(\..*)?", None),
]


class VerificationError(RuntimeError):
    """The exported folder does not reproduce the fairseq model; the message says where and by how much."""


# ------------------------------------------------------------------------------------------------ config
def hf_config_dict(model, task_cfg) -> dict:
    """MERTConfig fields (HuBERT names) describing the fairseq `mert` model `model`."""
    from mert_fairseq.common.config_values import parse_conv_layers

    cfg = model.cfg
    if cfg.activation_fn not in _ACTIVATION_NAMES:
        raise ValueError(f"model.activation_fn={cfg.activation_fn!r} has no transformers equivalent")
    conv = parse_conv_layers(cfg.conv_feature_layers)
    return dict(
        hidden_size=cfg.encoder_embed_dim,
        num_hidden_layers=cfg.encoder_layers,
        num_attention_heads=cfg.encoder_attention_heads,
        intermediate_size=cfg.encoder_ffn_embed_dim,
        hidden_act=_ACTIVATION_NAMES[cfg.activation_fn],
        hidden_dropout=float(cfg.dropout),
        attention_dropout=float(cfg.attention_dropout),
        activation_dropout=float(cfg.activation_dropout),
        feat_proj_dropout=float(cfg.dropout_input),
        layerdrop=float(cfg.encoder_layerdrop),
        layer_norm_eps=1e-5,
        feat_extract_norm="layer" if cfg.extractor_mode == "layer_norm" else "group",
        feat_extract_activation="gelu",
        conv_dim=[c[0] for c in conv],
        conv_kernel=[c[1] for c in conv],
        conv_stride=[c[2] for c in conv],
        conv_bias=bool(cfg.conv_bias),
        num_conv_pos_embeddings=int(cfg.conv_pos),
        num_conv_pos_embedding_groups=int(cfg.conv_pos_groups),
        conv_pos_batch_norm=False,  # read by the original MERT remote code on transformers >= 4.48
        do_stable_layer_norm=bool(cfg.layer_norm_first),
        feat_proj_layer_norm=True,
        deepnorm=bool(cfg.deepnorm),
        feature_extractor_cqt=bool(cfg.feature_extractor_cqt),
        feature_extractor_cqt_bins=int(cfg.feature_extractor_cqt_bins),
        do_cnn_feat_stable_layernorm=getattr(model, "post_proj_layer_norm", None) is not None,
        wav_normalize=bool(cfg.wav_normalize),
        sample_rate=int(task_cfg.sample_rate),
        attention_relax=float(cfg.attention_relax),
    )


def is_hubert_compatible(config: dict) -> bool:
    """True when transformers' HubertModel computes the same function (no MERT-only features)."""
    return not (config["deepnorm"] or config["feature_extractor_cqt"] or config["do_cnn_feat_stable_layernorm"]
                or config["wav_normalize"])


def describe_layout(config: dict) -> str:
    parts = [
        f"{config['num_hidden_layers']} layers x {config['hidden_size']}",
        "pre-LN" if config["do_stable_layer_norm"] else "post-LN",
        "layer-norm CNN" if config["feat_extract_norm"] == "layer" else "group-norm CNN",
    ]
    if config["deepnorm"]:
        parts.append("DeepNorm")
    if config["feature_extractor_cqt"]:
        parts.append(f"CQT input ({config['feature_extractor_cqt_bins']} bins)")
    return ", ".join(parts)


# Layouts of the published models, for the original `convert_HF_script.sh ... mert_base|mert_large` form.
EXPECTED_LAYOUTS = {
    "mert_base": dict(do_stable_layer_norm=False, feat_extract_norm="group",
                      reference=dict(hidden_size=768, num_hidden_layers=12)),
    "mert_large": dict(do_stable_layer_norm=True, feat_extract_norm="layer",
                       reference=dict(hidden_size=1024, num_hidden_layers=24)),
}


def check_layout(config: dict, expected: str) -> List[str]:
    """Raise if the checkpoint's encoder layout contradicts `expected` (mert_base / mert_large); return
    notes about sizes that differ from the published models (allowed: smaller models of the same layout)."""
    if expected not in EXPECTED_LAYOUTS:
        raise ValueError(f"unknown model size {expected!r}; expected one of {sorted(EXPECTED_LAYOUTS)}")
    want = EXPECTED_LAYOUTS[expected]
    wrong = [f"{k}={config[k]!r} (expected {v!r})" for k, v in want.items() if k != "reference" and config[k] != v]
    if wrong:
        raise ValueError(f"checkpoint layout does not match {expected}: " + ", ".join(wrong)
                         + f"; the checkpoint is {describe_layout(config)}")
    return [f"{k}={config[k]} differs from the published {expected} ({v})"
            for k, v in want["reference"].items() if config[k] != v]


# ------------------------------------------------------------------------------------------------ weights
def map_state_dict(fairseq_state: Dict[str, torch.Tensor], config: dict) -> Dict[str, torch.Tensor]:
    """fairseq `mert` state dict -> HF (HubertModel-named) fp32 state dict. Unknown keys are an error."""
    out: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in fairseq_state.items():
        for pattern, target in _KEY_RULES:
            if re.fullmatch(pattern, key):
                if target is not None:
                    out[re.sub(pattern, target, key)] = value.detach().to(torch.float32).clone().contiguous()
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"no HF name for fairseq keys: {unknown}")
    in_dim = config["conv_dim"][-1] + (config["feature_extractor_cqt_bins"] if config["feature_extractor_cqt"] else 0)
    # Stable CNN LayerNorm is non-affine in fairseq: the same function as weight 1, bias 0.
    out.setdefault("feature_projection.layer_norm.weight", torch.ones(in_dim))
    out.setdefault("feature_projection.layer_norm.bias", torch.zeros(in_dim))
    # No projection in fairseq when the CNN width equals D: an exact identity projection.
    out.setdefault("feature_projection.projection.weight", torch.eye(config["hidden_size"], in_dim))
    out.setdefault("feature_projection.projection.bias", torch.zeros(config["hidden_size"]))
    return out


def _check_against_hf_model(state: Dict[str, torch.Tensor], config: dict) -> None:
    """The mapped weights must fill this project's HF model exactly (names and shapes)."""
    from mert_fairseq.export.configuration_mert import MERTConfig
    from mert_fairseq.export.modeling_mert import MERTModel as HFMERTModel

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = {k: v.shape for k, v in HFMERTModel(MERTConfig(**config)).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(s)}" for k, s in expected.items()
              if k in state and tuple(state[k].shape) != tuple(s)]
    if missing or unexpected or shapes:
        raise ValueError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}, shapes {shapes}")


# ------------------------------------------------------------------------------------------------ writing
def write_hf_folder(model, task_cfg, out_dir: str | os.PathLike) -> dict:
    """Write config, weights, remote code and preprocessor config for the fairseq model; return the config."""
    from safetensors.torch import save_file
    from transformers import Wav2Vec2FeatureExtractor

    from mert_fairseq.export.configuration_mert import MERTConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = hf_config_dict(model, task_cfg)
    state = map_state_dict(model.state_dict(), fields)
    _check_against_hf_model(state, fields)

    config = MERTConfig(**fields)
    config.architectures = ["MERTModel"]
    config.auto_map = dict(AUTO_MAP)
    # every field written (HubertModel reads this file too, with its own defaults); no classifier-label noise
    config_dict = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_NOISE}
    atomic_write_text(out / "config.json", json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    for name, source in REMOTE_CODE_FILES.items():
        shutil.copyfile(source, out / name)
    tmp = out / ".model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")

    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=int(task_cfg.sample_rate), padding_value=0.0,
        do_normalize=bool(task_cfg.normalize), return_attention_mask=True,
    )
    atomic_write_text(out / "preprocessor_config.json", extractor.to_json_string())
    write_model_card(out, fields, model.cfg, task_cfg)
    return fields


# ------------------------------------------------------------------------------------------------ verifying
def _test_signals(sample_rate: int, min_length: int, seed: int) -> Dict[str, torch.Tensor]:
    """Deterministic test waveforms (|x| < 1): three clips of music from the demo corpus's synthesiser
    (chords, bass, melody, onsets; 2 s, a short odd length, 1.3 s + odd) and a 2 s tone plus noise."""
    from mert_fairseq.prep.demo_corpus import clip_spec, render_clip

    lengths = {"music 2 s": 2 * sample_rate, "music short odd": max(min_length + 1, sample_rate // 3) | 1,
               "music 1.3 s odd": int(1.3 * sample_rate) | 1}
    signals = {}
    for i, (name, n) in enumerate(lengths.items()):
        clip = render_clip(clip_spec(i, math.ceil(n / sample_rate), sample_rate, seed))
        signals[name] = torch.from_numpy(clip[:n].copy())
    n = 2 * sample_rate
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    tone = sum(0.2 / k * torch.sin(2 * math.pi * k * 110.0 * t + k) for k in range(1, 5))
    noise = 0.05 * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    signals["tone + noise 2 s"] = (tone + noise).float()
    return signals


@torch.no_grad()
def _fairseq_reference(model, wav: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """(hidden states in the HF layout, output of the last layer before the final LayerNorm) for B x L."""
    hidden, _ = model.extract_hidden_states(wav)
    last_raw, _ = model.extract_features(wav, output_layer=len(model.encoder.layers))
    return [h.float() for h in hidden], last_raw.float()


def _load_hf(folder: Path, loader: str):
    from transformers import AutoModel, HubertModel

    if loader == "AutoModel":
        model, info = AutoModel.from_pretrained(str(folder), trust_remote_code=True, output_loading_info=True)
    else:
        model, info = HubertModel.from_pretrained(str(folder), output_loading_info=True)
    problems = {k: sorted(map(str, v)) for k, v in info.items() if k in
                ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise VerificationError(f"{loader}.from_pretrained({folder}) did not load the weights cleanly: {problems}")
    return model.float().eval()


def _compare(loader: str, label: str, out, items: List[tuple], n_layers: int, atol: float, report: dict) -> None:
    """out: HF output for a batch; items[b] = (fairseq hidden states [1 x T_b x D] * (N+1), fairseq last layer
    before the final LayerNorm [1 x T_b x D]). Frames beyond T_b (padding) are ignored."""
    states = list(out.hidden_states or [])
    if len(states) != n_layers + 1:
        report["failures"].append(f"{loader}/{label}: {len(states)} hidden states, expected {n_layers + 1}")
        return
    note = None
    if loader == "HubertModel" and not torch.equal(states[-1], out.last_hidden_state):
        # transformers >= 5 HubertModel (pre-LN) returns the last layer's output before the final LayerNorm
        note = "HubertModel hidden_states[-1] = last layer before the final LayerNorm (compared to that)"
    diffs = [0.0] * (n_layers + 1)
    last = 0.0
    for b, (ref, raw_last) in enumerate(items):
        frames = ref[0].shape[1]
        if out.last_hidden_state.shape[1] < frames or (len(items) == 1 and out.last_hidden_state.shape[1] != frames):
            report["failures"].append(f"{loader}/{label}: {out.last_hidden_state.shape[1]} frames, "
                                      f"fairseq has {frames}")
            return
        expected = ref[:-1] + [raw_last] if note else ref
        for i, (s, r) in enumerate(zip(states, expected)):
            diffs[i] = max(diffs[i], float((s[b, :frames].float() - r[0]).abs().max()))
        last = max(last, float((out.last_hidden_state[b, :frames].float() - ref[-1][0]).abs().max()))
    entry = {"loader": loader, "input": label, "max_abs_diff_per_hidden_state": diffs,
             "max_abs_diff_last_hidden_state": last, "max_abs_diff": max(diffs + [last])}
    if note:
        entry["note"] = note
    report["checks"].append(entry)
    for i, d in enumerate(diffs):
        if not d <= atol:  # also catches NaN
            report["failures"].append(f"{loader}/{label}: hidden state {i} differs from fairseq by {d:.3g} > {atol:g}")
    if not last <= atol:
        report["failures"].append(f"{loader}/{label}: last_hidden_state differs from fairseq by {last:.3g} > {atol:g}")


def _bf16_difference(hf, signals: Dict[str, torch.Tensor], single: Dict[str, tuple]) -> dict:
    """Every hidden state of the model in bf16 against the fairseq fp32 reference, on the single clips."""
    hf = hf.to(torch.bfloat16)
    worst = mean = scale = 0.0
    for name, wav in signals.items():
        states = hf(wav[None].to(torch.bfloat16), output_hidden_states=True).hidden_states
        for s, r in zip(states, single[name][0]):
            d = (s.float() - r).abs()
            worst, mean = max(worst, float(d.max())), max(mean, float(d.mean()))
            scale = max(scale, float(r.abs().max()))
    hf.float()
    return {"max_abs_diff": worst, "mean_abs_diff": mean, "max_rel_diff": worst / max(scale, 1e-12)}


@torch.no_grad()
def verify_export(model, folder: str | os.PathLike, atol: float = DEFAULT_ATOL, hubert: Optional[bool] = None,
                  seed: int = 0, write_report: bool = True, source: Optional[str] = None) -> dict:
    """Compare every hidden state of the HF folder's model(s) with the fairseq `model` (eval, fp32).

    Checks: single clips (music of three lengths, incl. a short odd one, and a tone plus noise), an
    equal-length batch of two, and a padded batch of all the clips with an attention mask, whose real frames
    must equal the unpadded fairseq outputs (HubertModel: layer-norm CNN only, its GroupNorm takes the
    padding into its statistics). Returns the report (also written to verification.json); raises
    VerificationError when a difference exceeds `atol` or loading is not clean.
    """
    folder = Path(folder)
    model = model.float().eval()
    config = json.loads((folder / "config.json").read_text())
    n_layers = config["num_hidden_layers"]
    if hubert is None:
        hubert = is_hubert_compatible(config)
    sr = config["sample_rate"]
    signals = _test_signals(sr, receptive_field(config["conv_kernel"], config["conv_stride"]), seed)
    single = {name: _fairseq_reference(model, wav[None]) for name, wav in signals.items()}
    pair = torch.stack([signals["music 2 s"], 0.5 * torch.roll(signals["tone + noise 2 s"], sr // 7)])
    pair_ref, pair_raw = _fairseq_reference(model, pair)
    pair_items = [([h[b:b + 1] for h in pair_ref], pair_raw[b:b + 1]) for b in range(2)]
    lengths = [w.shape[0] for w in signals.values()]
    padded = torch.zeros(len(signals), max(lengths))
    mask = torch.zeros(len(signals), max(lengths), dtype=torch.long)
    for b, wav in enumerate(signals.values()):
        padded[b, : lengths[b]] = wav
        mask[b, : lengths[b]] = 1

    report = {"folder": str(folder), "checkpoint": source, "layout": describe_layout(config), "tolerance": atol,
              "hubert_compatible": is_hubert_compatible(config), "checks": [], "failures": [], "notes": []}
    loaders = ["AutoModel"] + (["HubertModel"] if hubert else [])
    for loader in loaders:
        try:
            hf = _load_hf(folder, loader)
        except Exception as exc:  # report, then fail below
            report["failures"].append(f"{loader}: cannot load ({exc})")
            continue
        for name, wav in signals.items():
            out = hf(wav[None], output_hidden_states=True)
            _compare(loader, f"{name}: 1 x {wav.shape[0]} samples", out, [single[name]], n_layers, atol, report)
        out = hf(pair, output_hidden_states=True)
        _compare(loader, f"batch: 2 x {pair.shape[1]} samples", out, pair_items, n_layers, atol, report)
        if loader == "AutoModel" or config["feat_extract_norm"] == "layer":
            out = hf(padded, attention_mask=mask, output_hidden_states=True)
            _compare(loader, f"padded batch {lengths} + attention_mask vs unpadded", out,
                     [single[n] for n in signals], n_layers, atol, report)
        if loader == "AutoModel":
            report["bf16"] = _bf16_difference(hf, signals, single)
    if hubert and config["feat_extract_norm"] != "layer":
        report["notes"].append("HubertModel: padded batch not checked (its GroupNorm takes the padding into the "
                               "statistics: feed it one clip at a time); AutoModel handles padded batches")
    report["max_abs_diff"] = {loader: max([c["max_abs_diff"] for c in report["checks"] if c["loader"] == loader],
                                          default=None) for loader in loaders}
    report["passed"] = not report["failures"]
    if write_report:
        atomic_write_text(folder / "verification.json", json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        raise VerificationError("HF export verification FAILED for " + str(folder) + ":\n  "
                                + "\n  ".join(report["failures"]))
    return report


# ------------------------------------------------------------------------------------------------ entry point
def convert_checkpoint(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike, verify: bool = True,
                       atol: float = DEFAULT_ATOL, expected_layout: Optional[str] = None) -> dict:
    """fairseq checkpoint -> HF folder (+ verification). Returns {"config", "layout", "notes", "report"}."""
    from mert_fairseq.checkpoint.model_loading import load_mert_model

    model, task_cfg = load_mert_model(checkpoint_path)
    model = model.float().eval()
    fields = hf_config_dict(model, task_cfg)
    notes = check_layout(fields, expected_layout) if expected_layout else []
    write_hf_folder(model, task_cfg, out_dir)
    result = {"config": fields, "layout": describe_layout(fields), "notes": notes, "report": None}
    if verify:
        result["report"] = verify_export(model, out_dir, atol=atol, source=str(checkpoint_path))
    write_model_card(out_dir, fields, model.cfg, task_cfg, result["report"], str(checkpoint_path))
    return result


def format_report(report: dict) -> str:
    lines = [f"verification of {report['folder']} ({report['layout']}), tolerance {report['tolerance']:g}:"]
    for c in report["checks"]:
        per = " ".join(f"{d:.1e}" for d in c["max_abs_diff_per_hidden_state"])
        lines.append(f"  {c['loader']:<11} {c['input']:<52} max {c['max_abs_diff']:.2e}  [{per}]")
        if "note" in c:
            lines.append(f"              note: {c['note']}")
    for n in report.get("notes", []):
        lines.append(f"  note: {n}")
    if report.get("bf16"):
        lines.append("  bf16 (informational): max |diff| {max_abs_diff:.3g}, relative {max_rel_diff:.2g}"
                     .format(**report["bf16"]))
    lines.append("  PASSED" if report["passed"] else "  FAILED:\n    " + "\n    ".join(report["failures"]))
    return "\n".join(lines)


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(
        description="Convert a MERT fairseq checkpoint to a Hugging Face folder and verify it numerically.")
    parser.add_argument("--checkpoint", "--checkpoint-path", "--checkpoint_path", required=True,
                        help="fairseq checkpoint (.pt) of a `mert` model")
    parser.add_argument("--out-dir", "--pytorch-dump-folder", "--pytorch_dump_folder", "--pytorch_dump_folder_path",
                        required=True, help="output folder (created; existing export files are overwritten)")
    parser.add_argument("--expect", choices=sorted(EXPECTED_LAYOUTS), default=None,
                        help="fail unless the checkpoint has this layout (post-LN/group-norm CNN for mert_base, "
                             "pre-LN/layer-norm CNN for mert_large)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="max abs difference of any hidden state")
    parser.add_argument("--no-verify", action="store_true", help="skip the numerical verification (not advised)")
    parser.add_argument("--verify-only", action="store_true",
                        help="do not write anything but verification.json: re-check an existing folder")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from mert_fairseq.checkpoint.model_loading import load_mert_model

    try:
        if args.verify_only:
            model, task_cfg = load_mert_model(args.checkpoint)
            report = verify_export(model, args.out_dir, atol=args.atol, source=args.checkpoint)
            write_model_card(args.out_dir, hf_config_dict(model, task_cfg), model.cfg, task_cfg, report,
                             args.checkpoint)
            print(format_report(report))
            return 0
        result = convert_checkpoint(args.checkpoint, args.out_dir, verify=not args.no_verify, atol=args.atol,
                                    expected_layout=args.expect)
    except VerificationError as exc:
        report_path = Path(args.out_dir) / "verification.json"
        if report_path.exists():
            print(format_report(json.loads(report_path.read_text())))
        print(f"ERROR: {exc}\n(report: {report_path})")
        return 1
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"ERROR: {exc}")
        return 2
    print(f"checkpoint layout: {result['layout']}"
          + (f" -- matches {args.expect}" if args.expect else ""))
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.out_dir}: config.json, model.safetensors, {', '.join(REMOTE_CODE_FILES)}, "
          "preprocessor_config.json, README.md" + (", verification.json" if result["report"] else ""))
    if result["config"] and is_hubert_compatible(result["config"]):
        print("plain HuBERT layout: also loadable with transformers.HubertModel.from_pretrained(folder)")
    if result["report"]:
        print(format_report(result["report"]))
    else:
        print("WARNING: not verified (--no-verify)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
