"""The README.md model card the converter writes into every export folder: how the model was trained (from
the checkpoint's model and task config), its input, its layers, how to load it, and what the converter
verified (fp32 tolerance, measured bf16 difference)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from mert_fairseq.common.atomic_files import atomic_write_text


def _training(model_cfg, task_cfg) -> list:
    """Bullet lines on the pretraining recipe, read from the checkpoint's config."""
    online = task_cfg.get("online_targets") if hasattr(task_cfg, "get") else None
    if online:
        teachers = f"codes computed on the fly (`task.online_targets={online}`)"
    else:
        labels = list(task_cfg.get("labels") or [])
        teachers = f"{len(labels)} label stream(s) from files: {', '.join(map(str, labels)) or 'none'}"
    lines = [
        f"- Objective: masked prediction of discrete teacher codes at {float(model_cfg.label_rate):g} Hz, {teachers}",
        f"- Masking: span length {model_cfg.mask_length}, probability {model_cfg.mask_prob}"
        + (f"; in-batch noise mixture with probability {model_cfg.mixture_prob}" if model_cfg.mixture_prob else ""),
    ]
    if model_cfg.audio_cqt_loss_m:
        lines.append(f"- Musical teacher: regression of a {model_cfg.audio_cqt_bins}-bin CQT at the masked frames")
    if task_cfg.get("max_sample_size"):
        lines.append(f"- Crops of at most {int(task_cfg.max_sample_size) / float(task_cfg.sample_rate):g} s; "
                     f"waveform normalised per crop: {bool(task_cfg.get('normalize', False))}")
    return lines


def _verification(report: Optional[dict]) -> list:
    if report is None:
        return ["Not verified (written without `verify_export`): run `scripts/convert_to_hf.py --verify-only`."]
    fp32 = max(v for v in report["max_abs_diff"].values() if v is not None)
    lines = [f"`verification.json`: every hidden state of this folder's model (fp32) equals the fairseq "
             f"checkpoint's within {report['tolerance']:g} (largest difference measured: {fp32:.2g}) on demo "
             "music of three lengths, a tone plus noise, an equal-length batch and a padded batch with its "
             "attention mask."]
    bf16 = report.get("bf16")
    if bf16:
        lines.append(f"In bf16 (`model.to(torch.bfloat16)`) the hidden states differ from the fp32 checkpoint by up "
                     f"to {bf16['max_abs_diff']:.3g} ({100 * bf16['max_rel_diff']:.2g}% of the largest state; "
                     f"mean {bf16['mean_abs_diff']:.2g}), measured on the same clips.")
    return lines


def model_card(config: dict, model_cfg, task_cfg, report: Optional[dict] = None,
               source: Optional[str] = None) -> str:
    """README.md text for the export of a fairseq `mert` model (config: the exported config.json fields)."""
    sr = int(config["sample_rate"])
    hop = 1
    for s in config["conv_stride"]:
        hop *= int(s)
    inputs = "waveform" + (f" + {config['feature_extractor_cqt_bins']}-bin CQT" if config["feature_extractor_cqt"]
                           else "")
    layout = ("pre-LN" if config["do_stable_layer_norm"] else "post-LN") + (", DeepNorm" if config["deepnorm"]
                                                                             else "")
    text = [
        "# MERT acoustic music model",
        "",
        f"Exported by mert-fairseq (`scripts/convert_to_hf.py`) from `{source or 'a fairseq checkpoint'}`.",
        "",
        "## Model",
        f"- Input: mono audio at **{sr} Hz** ({inputs}); {sr / hop:g} frames per second (hop {hop} samples)",
        f"- {config['num_hidden_layers']} transformer layers ({layout}), width {config['hidden_size']}, "
        f"{config['num_attention_heads']} heads; CNN feature encoder with {config['feat_extract_norm']} norm",
        f"- `output_hidden_states=True` gives {config['num_hidden_layers'] + 1} states: the transformer input "
        "(0), then every layer",
        "",
        "## How it was trained",
        *_training(model_cfg, task_cfg),
        "",
        "## How to load it",
        "```python",
        "import torch",
        "from transformers import AutoModel, Wav2Vec2FeatureExtractor",
        "",
        'model = AutoModel.from_pretrained("PATH_OR_REPO", trust_remote_code=True).eval()',
        'processor = Wav2Vec2FeatureExtractor.from_pretrained("PATH_OR_REPO")',
        f"# clips: list of 1-D float arrays at {sr} Hz, any lengths: the padded batch gives each clip its own features",
        f"inputs = processor(clips, sampling_rate={sr}, padding=True, return_tensors=\"pt\")  # with attention_mask",
        "with torch.no_grad():",
        "    states = model(**inputs, output_hidden_states=True).hidden_states  # each B x T x "
        f"{config['hidden_size']}",
        "```",
        "Pass the `attention_mask` with every padded batch. Fine-tuning: `model.gradient_checkpointing_enable()` "
        "recomputes the transformer layers in the backward pass (same gradients, less memory).",
        "",
        "## Verification",
        *_verification(report),
        "",
    ]
    return "\n".join(text)


def write_model_card(folder: str | Path, config: dict, model_cfg, task_cfg, report: Optional[dict] = None,
                     source: Optional[str] = None) -> None:
    atomic_write_text(Path(folder) / "README.md", model_card(config, model_cfg, task_cfg, report, source))
