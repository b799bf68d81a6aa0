"""One PNG of a pretraining run: loss, per-codebook masked accuracy, CQT loss, learning rate,
audio-seconds per second and the online probe curves (`probe_<task>`).

Reads a fairseq log (`common.log_format` simple or json, as written by fairseq-hydra-train to its
log file / stdout) or a tensorboard folder (`common.tensorboard_logdir`, event files under
train_inner/, train/, valid/). Audio-seconds per second = updates/s x clips per batch x crop seconds
(the crop comes from the run's .hydra/config.yaml when found next to the log, else `crop_seconds`).
"""
from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

Series = Dict[str, Dict[str, List[Tuple[float, float]]]]  # kind (train_inner/train/valid) -> key -> [(update, value)]
KINDS = ("train_inner", "train", "valid")
_KIND = re.compile(r"\]\[(train_inner|train|valid)\]|\| (train_inner|train|valid) \|")
_PAIR = re.compile(r"(?:^|[\s|,])([A-Za-z_][\w]*)[ =](-?[0-9.]+(?:e[-+]?\d+)?|inf|nan)(?=[\s,|]|$)")


def _number(v) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def parse_log_lines(lines: Sequence[str]) -> Series:
    """fairseq simple / json log lines -> series keyed by the update number (`num_updates`)."""
    series: Series = defaultdict(lambda: defaultdict(list))
    for line in lines:
        m = _KIND.search(line)
        if not m:
            continue
        kind = m.group(1) or m.group(2)
        brace = line.find("{", m.end())
        if brace >= 0:
            try:
                values = {k: _number(v) for k, v in json.loads(line[brace:]).items()}
            except json.JSONDecodeError:
                continue
        else:
            values = {k: _number(v) for k, v in _PAIR.findall(line[m.end():])}
        step = values.get("num_updates")
        if step is None:
            continue
        for key, value in values.items():
            if value is not None and key != "num_updates":
                series[kind][key].append((step, value))
    return series


def _tfrecords(path: Path):
    """Raw records of a TFRecord file (length, crc, data, crc); crcs are not checked."""
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            (length,) = struct.unpack("<Q", head[:8])
            data = f.read(length)
            f.read(4)
            if len(data) < length:
                return
            yield data


def read_tensorboard(folder: str | os.PathLike) -> Series:
    """Scalars of fairseq's tensorboard folders (one sub-folder per kind) -> series."""
    from tensorboardX.proto.event_pb2 import Event

    series: Series = defaultdict(lambda: defaultdict(list))
    for event_file in sorted(Path(folder).rglob("events.out.tfevents.*")):
        kind = event_file.parent.name
        for record in _tfrecords(event_file):
            event = Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    series[kind][value.tag].append((float(event.step), float(value.simple_value)))
                elif value.HasField("tensor") and value.tensor.float_val:
                    series[kind][value.tag].append((float(event.step), float(value.tensor.float_val[0])))
    return series


def read_run(path: str | os.PathLike) -> Series:
    path = Path(path)
    if path.is_dir():
        if not any(path.rglob("events.out.tfevents.*")):
            raise FileNotFoundError(f"{path}: no tensorboard event files in this folder")
        return read_tensorboard(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such log file or tensorboard folder")
    series = parse_log_lines(path.read_text(errors="replace").splitlines())
    if not series:
        raise ValueError(f"{path}: no fairseq train/valid log lines with num_updates found")
    return series


def crop_seconds_from_hydra(log_path: Path) -> Optional[float]:
    """task.max_sample_size / task.sample_rate from the run's .hydra/config.yaml, when next to the log."""
    for folder in (log_path.parent, log_path.parent.parent):
        cfg = folder / ".hydra" / "config.yaml"
        if cfg.is_file():
            from omegaconf import OmegaConf

            task = OmegaConf.load(cfg).get("task") or {}
            if task.get("max_sample_size") and task.get("sample_rate"):
                return float(task["max_sample_size"]) / float(task["sample_rate"])
    return None


def plot_run(series: Series, out_png: str | os.PathLike, title: str = "", crop_seconds: Optional[float] = None) -> List[str]:
    """Write the PNG; returns the panel titles drawn."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its DEBUG font search floods verbose roots
    import matplotlib.pyplot as plt

    from mert_fairseq.common.atomic_files import atomic_open

    def curves(pattern: str, kinds=("train_inner", "valid")):
        return [(kind, key, pts) for kind in kinds for key, pts in sorted(series.get(kind, {}).items())
                if re.fullmatch(pattern, key) and pts]

    inner = series.get("train_inner", {})
    speed = []
    if "ups" in inner and "bsz" in inner:
        bsz = dict(inner["bsz"])
        factor = crop_seconds or 1.0
        speed = [(s, u * bsz[s] * factor) for s, u in inner["ups"] if s in bsz]
    panels = [
        ("loss", curves(r"loss")),
        ("masked accuracy per codebook", curves(r"correct_m_\d+")),
        ("CQT / mel reconstruction loss", curves(r"loss_(cqt|mel)_pred_m")),
        ("learning rate", curves(r"lr", ("train_inner",))),
        ("audio-seconds / s" if crop_seconds else "clips / s", [("train_inner", "speed", speed)] if speed else []),
        ("online probes (best layer)", curves(r"probe_\w+", ("train_inner", "valid"))),
    ]
    panels = [p for p in panels if p[1]]
    if not panels:
        raise ValueError("nothing to plot: no loss, accuracy, lr, speed or probe values in the log")
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.0 * rows), squeeze=False)
    for i, (name, lines) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for kind, key, pts in lines:
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3,
                    linestyle="--" if kind == "valid" else "-", label=f"{key} ({kind})")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for j in range(len(panels), rows * cols):
        axes[j // cols][j % cols].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_open(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
    return [p[0] for p in panels]


def build_parser():
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="fairseq log file (simple or json format) or a tensorboard folder")
    p.add_argument("--out", default=None, help="PNG to write (default: next to the log, training.png)")
    p.add_argument("--crop-seconds", type=float, default=None,
                   help="seconds per clip in a batch (default: from .hydra/config.yaml next to the log)")
    p.add_argument("--title", default=None, help="figure title (default: the log's path)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    path = Path(args.log)
    try:
        series = read_run(path)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    crop = args.crop_seconds or (crop_seconds_from_hydra(path) if path.is_file() else None)
    out = Path(args.out) if args.out else (path if path.is_dir() else path.parent) / "training.png"
    panels = plot_run(series, out, args.title if args.title is not None else str(path), crop)
    print(f"wrote {out} ({', '.join(panels)})")
    return 0
