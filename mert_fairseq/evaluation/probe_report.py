"""The probe command line (`scripts/probe.py`): probes every model given on the labelled clips and writes the
table (best layer per task and model, `probe.md`), `probe.json` and `probe_layers.png` (score per layer)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mert_fairseq.evaluation.probe import KINDS, POOLS, ProbeError, parse_rows, read_probe_csv
from mert_fairseq.evaluation.probe_features import feature_source, run_probes

logger = logging.getLogger(__name__)


def format_table(results: Dict[str, List[dict]]) -> str:
    """Markdown table: one row per task, one column per model: best-layer score +- its fold std (layer)."""
    names = list(results)
    tasks = [r["task"] for r in next(iter(results.values()))]
    head = ["task", "metric", "chance"] + names
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, task in enumerate(tasks):
        first = results[names[0]][i]
        cells = [task, first["metric"], f"{first['chance']:.3f}"]
        cells += [_cell(results[n][i]) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(result: dict) -> str:
    spread = f" ± {result['std']:.3f}" if result.get("std") is not None else ""  # k-fold CV only
    return f"{result['score']:.3f}{spread} (L{result['best_layer']})"


def write_json(results: Dict[str, List[dict]], path: str | os.PathLike, extra: Optional[dict] = None) -> None:
    from mert_fairseq.common.atomic_files import atomic_write_text

    atomic_write_text(path, json.dumps({"results": results, **(extra or {})}, indent=1) + "\n")


def plot_layers(results: Dict[str, List[dict]], path: str | os.PathLike) -> None:
    """One panel per task: score per layer, one line per model (one-layer baselines as dashed lines)."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    from mert_fairseq.common.atomic_files import atomic_open

    tasks = [r["task"] for r in next(iter(results.values()))]
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for i, task in enumerate(tasks):
        ax = axes[i // cols][i % cols]
        for name, per_task in results.items():
            entry = per_task[i]
            scores = [e["score"] for e in entry["layers"]]
            if len(scores) == 1:
                ax.axhline(scores[0], linestyle="--", label=name, color="grey" if name == "mfcc" else None)
            else:
                ax.plot(range(len(scores)), scores, marker="o", label=name)
        ax.axhline(per_task[i]["chance"], linestyle=":", color="black", linewidth=0.8, label="chance")
        ax.set_title(f"{task} ({entry['metric']})")
        ax.set_xlabel("layer (0 = CNN + projection)")
        ax.set_xticks(range(max(len(r[i]["layers"]) for r in results.values())))
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    for j in range(len(tasks), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- CLI
def build_parser():
    import argparse

    p = argparse.ArgumentParser(description="Probe frozen features (per layer, pooled over time) on labelled clips.")
    p.add_argument("models", nargs="+", help="checkpoint .pt files, exported HF folders, 'mfcc', "
                   "'random-init:CKPT'; prefix with NAME= to name a column (e.g. demo=ckpt.pt)")
    p.add_argument("--labels", required=True, help="CSV with a file column and task columns")
    p.add_argument("--tasks", default=None, help="comma list of columns, each optionally column:kind "
                   f"({'/'.join(KINDS)}); default: every column but file and split")
    p.add_argument("--file-column", default="file", help="CSV column holding the audio paths")
    p.add_argument("--audio-root", default=None, help="folder the file column is relative to (default: CSV's)")
    p.add_argument("--split-column", default=None, help="column with train/valid/test (else k-fold CV)")
    p.add_argument("--rows", default=None, help="probe only these data rows of the CSV, START:END (0-based, END "
                   "exclusive), e.g. :100 to choose a recipe and 100: to report on clips not used to choose it")
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold cross-validation (without --split-column)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regressions")
    p.add_argument("--alpha", type=float, default=1.0, help="L2 strength of the ridge regressions")
    p.add_argument("--out-dir", default="probe_results", help="writes probe.json, probe.md and probe_layers.png")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: OUT_DIR/cache)")
    p.add_argument("--device", default="cpu", help="torch device for feature extraction")
    p.add_argument("--pool", default="mean", choices=POOLS, help="time pooling of MERT layers (MARBLE: mean); "
                   "mean+std matches the mfcc baseline's statistics")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for extraction (0: torch's default). "
                   "Clips go through the model one at a time, so on a small or busy machine 1 thread is the "
                   "cheapest (demo: 5x less CPU than 2 threads on 2 shared cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="log INFO messages (cache hits, model loading)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from mert_fairseq.common.atomic_files import atomic_write_text

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    if args.threads < 0:
        logger.error("--threads %d: must be >= 0", args.threads)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        probe_set = read_probe_csv(args.labels, args.tasks.split(",") if args.tasks else None, args.file_column,
                                   args.split_column, args.audio_root)
        if args.rows is not None:
            probe_set = probe_set.subset(parse_rows(args.rows, len(probe_set.files)))
        sources = [feature_source(m, args.device, args.pool) for m in args.models]
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ProbeError(f"two models share a name ({', '.join(names)}); name them with NAME=path")
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        results = run_probes(sources, probe_set, args.cache_dir or str(out / "cache"), not args.no_progress,
                             folds=args.folds, seed=args.seed, C=args.C, alpha=args.alpha)
    except (ProbeError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    table = format_table(results)
    evaluation = f"split column {args.split_column!r}" if args.split_column else f"{args.folds}-fold CV (± fold std)"
    if args.rows is not None:
        evaluation += f", rows {args.rows} of {args.labels}"
    evaluation += f", MERT layers pooled {args.pool}"
    write_json(results, out / "probe.json", {"labels": str(args.labels), "clips": len(probe_set.files),
                                             "evaluation": evaluation, "models": list(args.models)})
    atomic_write_text(out / "probe.md", table + "\n")
    plot_layers(results, out / "probe_layers.png")
    print(f"\nprobe: {len(probe_set.files)} clips, {evaluation}; best layer per task (score, layer):\n{table}\n")
    print(f"wrote {out / 'probe.json'}, {out / 'probe.md'}, {out / 'probe_layers.png'}")
    return 0
