"""MARBLE-style probing of frozen features: per layer, time-pooled, a linear model per task.

    probe_set = read_probe_csv("metadata.csv", tasks=["key", "mode", "tempo_bpm:regression"])
    sources = [feature_source("runs/demo/checkpoints/checkpoint_last.pt"), feature_source("mfcc"),
               feature_source("random-init:runs/demo/checkpoints/checkpoint_last.pt")]
    results = run_probes(sources, probe_set, folds=5, cache_dir="probe_cache")
    print(format_table(results))

Features: every hidden state of a MERT model (fairseq checkpoint or exported HF folder, through
`mert_fairseq.evaluation.features`), mean-pooled over time -> one (layers + 1) x D array per clip (`pool="mean+std"`:
mean and standard deviation, (layers + 1) x 2D, the pooling of the MFCC baseline); the `mfcc`
baseline is the mean and standard deviation over time of MFCCs + deltas (one "layer"); `random-init:CKPT`
is the checkpoint's architecture re-initialised from its own seed (what training started from).

Task kinds (column type is inferred; force it with `column:kind`):
  class       single label -> standardised logistic regression, score = accuracy
  multilabel  tags joined by ";" -> one-vs-rest logistic regression, score = macro ROC-AUC (also AP)
  regression  numbers -> standardised ridge regression, score = R^2
Evaluation: a split column (train / valid / test: fit on train, the best layer is the one with the
best valid score when a valid split exists, scores reported on test) or k-fold cross-validation
(scores are fold means; the best layer is picked on those same means, so it is slightly optimistic).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

KINDS = ("class", "multilabel", "regression")
POOLS = ("mean", "mean+std")  # time pooling of MERT hidden states (MFCC statistics are always mean+std)
METRIC = {"class": "accuracy", "multilabel": "roc_auc", "regression": "r2"}
SPLITS = ("train", "valid", "test")


class ProbeError(ValueError):
    """Bad probe input (CSV, task or model spec); the message names the file (and line)."""


# ---------------------------------------------------------------------------------------------- labels
@dataclass
class ProbeTask:
    """One task: y is int [N] (class), 0/1 [N, K] (multilabel) or float [N] (regression)."""

    name: str
    kind: str
    y: np.ndarray
    classes: List[str] = field(default_factory=list)

    def subset(self, rows: np.ndarray) -> "ProbeTask":
        return ProbeTask(self.name, self.kind, self.y[rows], self.classes)


@dataclass
class ProbeSet:
    files: List[Path]
    tasks: List[ProbeTask]
    split: Optional[np.ndarray] = None  # "train" / "valid" / "test" per row

    def subset(self, rows: np.ndarray) -> "ProbeSet":
        """The rows `rows` (indices into the CSV's data rows) as a probe set of their own."""
        return ProbeSet([self.files[i] for i in rows], [t.subset(rows) for t in self.tasks],
                        None if self.split is None else self.split[rows])


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def infer_kind(values: Sequence[str], sep: str = ";") -> str:
    if any(sep in v for v in values):
        return "multilabel"
    if all(_is_number(v) for v in values) and len(set(values)) > 10:
        return "regression"
    return "class"


def make_task(name: str, values: Sequence[str], kind: Optional[str] = None, sep: str = ";",
              where: str = "") -> ProbeTask:
    """Column values (strings) -> a ProbeTask of `kind` (inferred when None)."""
    kind = kind or infer_kind(values, sep)
    if kind not in KINDS:
        raise ProbeError(f"{where}task {name!r}: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "regression":
        bad = [i for i, v in enumerate(values) if not _is_number(v)]
        if bad:
            raise ProbeError(f"{where}task {name!r} is numeric but row {bad[0] + 1} has {values[bad[0]]!r}")
        return ProbeTask(name, kind, np.array([float(v) for v in values]))
    if kind == "multilabel":
        tags = [[t.strip() for t in v.split(sep) if t.strip()] for v in values]
        classes = sorted({t for row in tags for t in row})
        y = np.zeros((len(values), len(classes)), dtype=np.int64)
        for i, row in enumerate(tags):
            y[i, [classes.index(t) for t in row]] = 1
        return ProbeTask(name, kind, y, classes)
    classes = sorted(set(values))
    return ProbeTask(name, kind, np.array([classes.index(v) for v in values]), classes)


def read_probe_csv(path: str | os.PathLike, tasks: Optional[Sequence[str]] = None, file_column: str = "file",
                   split_column: Optional[str] = None, audio_root: Optional[str | os.PathLike] = None,
                   sep: str = ";") -> ProbeSet:
    """A labels CSV (a file column + task columns) -> ProbeSet. `tasks` entries are `column` or
    `column:kind`; None = every column but file / split. Audio paths are relative to `audio_root`
    (default: the CSV's folder) unless absolute."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: labels CSV not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = list(reader)
    if file_column not in columns:
        raise ProbeError(f"{path}:1: no {file_column!r} column (columns: {', '.join(columns)})")
    if not rows:
        raise ProbeError(f"{path}: no rows")
    if split_column is not None and split_column not in columns:
        raise ProbeError(f"{path}:1: no split column {split_column!r}")
    specs = [t.split(":", 1) if ":" in t else (t, None) for t in
             (tasks or [c for c in columns if c not in (file_column, split_column)])]
    for name, _ in specs:
        if name not in columns:
            raise ProbeError(f"{path}:1: no column {name!r} for task {name!r} (columns: {', '.join(columns)})")
    for n, row in enumerate(rows, start=2):
        for name in [file_column] + [s[0] for s in specs]:
            if not (row.get(name) or "").strip():
                raise ProbeError(f"{path}:{n}: empty {name!r}")
    root = Path(audio_root) if audio_root is not None else path.parent
    files = [Path(r[file_column]) if Path(r[file_column]).is_absolute() else root / r[file_column] for r in rows]
    split = None
    if split_column is not None:
        split = np.array([r[split_column].strip().lower() for r in rows])
        for n, s in enumerate(split, start=2):
            if s not in SPLITS:
                raise ProbeError(f"{path}:{n}: split {str(s)!r} must be one of {', '.join(SPLITS)}")
        if not {"train", "test"} <= set(split):
            raise ProbeError(f"{path}: split column {split_column!r} needs train and test rows")
    probe_tasks = [make_task(name, [r[name].strip() for r in rows], kind, sep, where=f"{path}: ")
                   for name, kind in specs]
    return ProbeSet(files, probe_tasks, split)


def parse_rows(spec: str, n: int) -> np.ndarray:
    """`START:END` (0-based data rows, END exclusive; either may be omitted) -> row indices, e.g. the
    first 100 clips to choose a recipe on (`:100`) and the rest to report on (`100:`)."""
    match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", spec)
    if not match:
        raise ProbeError(f"--rows {spec!r}: expected START:END (0-based data rows, END exclusive), e.g. 100:200")
    start, end = (int(g) if g else d for g, d in zip(match.groups(), (0, n)))
    if not 0 <= start < end <= n:
        raise ProbeError(f"--rows {spec!r}: need 0 <= START < END <= {n} (rows in the CSV)")
    return np.arange(start, end)


# ---------------------------------------------------------------------------------------------- scoring
def fit_and_score(kind: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                  C: float = 1.0, alpha: float = 1.0) -> Dict[str, float]:
    """Fit one standardised linear probe and score it; the primary score is under "score"."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import average_precision_score, r2_score, roc_auc_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "class":
        if len(np.unique(y_train)) < 2:  # one class seen: predict it
            return {"score": float(np.mean(y_test == y_train[0]))}
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        model.fit(x_train, y_train)
        return {"score": float(np.mean(model.predict(x_test) == y_test))}
    if kind == "regression":
        model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x_train, y_train)
        return {"score": float(r2_score(y_test, model.predict(x_test)))}
    usable = [k for k in range(y_train.shape[1]) if 0 < y_train[:, k].sum() < len(y_train)
              and 0 < y_test[:, k].sum() < len(y_test)]  # tags with both outcomes in train and test
    if not usable:
        return {"score": float("nan"), "ap": float("nan")}
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=C, max_iter=2000)))
    model.fit(x_train, y_train[:, usable])
    scores = model.predict_proba(x_test)
    return {"score": float(roc_auc_score(y_test[:, usable], scores, average="macro")),
            "ap": float(average_precision_score(y_test[:, usable], scores, average="macro"))}


def fold_indices(task: ProbeTask, folds: int, seed: int) -> List[tuple]:
    """(train rows, test rows) per fold; stratified for class tasks when every class has `folds` rows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(task.y)
    if folds < 2 or folds > n:
        raise ProbeError(f"folds={folds}: need 2 <= folds <= {n} (rows)")
    if task.kind == "class" and np.bincount(task.y).min() >= folds:
        return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(n), task.y))
    return list(KFold(folds, shuffle=True, random_state=seed).split(np.zeros(n)))


def probe_task(features: np.ndarray, task: ProbeTask, split: Optional[np.ndarray] = None, folds: int = 5,
               seed: int = 0, C: float = 1.0, alpha: float = 1.0) -> dict:
    """features N x L x D (pooled, per layer) -> {"layers": [per-layer scores], "best_layer", "score", ...}."""
    if features.ndim != 3 or len(features) != len(task.y):
        raise ProbeError(f"features {features.shape} do not match {len(task.y)} labelled rows (need N x L x D)")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # tiny problems: threaded BLAS only adds overhead (10x on a busy CPU)
        per_layer = _probe_layers(features, task, split, folds, seed, C, alpha)
    select = "valid" if per_layer and "valid" in per_layer[0] else "score"
    best = max(per_layer, key=lambda e: -np.inf if np.isnan(e[select]) else e[select])
    return {"task": task.name, "kind": task.kind, "metric": METRIC[task.kind], "layers": per_layer,
            "best_layer": best["layer"], "score": best["score"], "std": best.get("std"),
            "chance": chance_score(task)}


def _probe_layers(features: np.ndarray, task: ProbeTask, split: Optional[np.ndarray], folds: int, seed: int,
                  C: float, alpha: float) -> List[dict]:
    per_layer = []
    for layer in range(features.shape[1]):
        x = features[:, layer]
        if split is not None:
            train, test = split == "train", split == "test"
            entry = {"layer": layer, **fit_and_score(task.kind, x[train], task.y[train], x[test], task.y[test], C, alpha)}
            if (split == "valid").any():
                valid = split == "valid"
                entry["valid"] = fit_and_score(task.kind, x[train], task.y[train], x[valid], task.y[valid], C,
                                               alpha)["score"]
        else:
            runs = [fit_and_score(task.kind, x[a], task.y[a], x[b], task.y[b], C, alpha)
                    for a, b in fold_indices(task, folds, seed)]
            entry = {"layer": layer, **{k: float(np.nanmean([r[k] for r in runs])) for k in runs[0]},
                     "std": float(np.nanstd([r["score"] for r in runs]))}
        per_layer.append(entry)
    return per_layer


def chance_score(task: ProbeTask) -> float:
    """Majority-class accuracy (class), 0.5 ROC-AUC (multilabel), 0 R^2 (regression)."""
    if task.kind == "class":
        return float(np.bincount(task.y).max() / len(task.y))
    return 0.5 if task.kind == "multilabel" else 0.0


def probe_all(features: np.ndarray, probe_set: ProbeSet, **kwargs) -> List[dict]:
    return [probe_task(features, t, probe_set.split, **kwargs) for t in probe_set.tasks]


# ---------------------------------------------------------------------------------------------- features
def _file_identity(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


class FeatureSource:
    """A named way to turn an audio file into pooled features (L x D); `identity` keys the cache."""

    name: str
    sample_rate: int

    def identity(self) -> dict:
        raise NotImplementedError

    def pooled(self, path: Path) -> np.ndarray:
        raise NotImplementedError


def mean_std(frames: np.ndarray, axis: int) -> np.ndarray:
    """Mean and standard deviation over the time `axis`, concatenated on the last axis."""
    return np.concatenate([frames.mean(axis), frames.std(axis)], axis=-1)


class MERTSource(FeatureSource):
    """Every hidden state of a MERT model (checkpoint, HF folder or random init), pooled over time:
    `pool` "mean" -> L x D, "mean+std" -> L x 2D (mean, then standard deviation)."""

    def __init__(self, name: str, path: str, kind: str, window_seconds: float = 30.0, device: str = "cpu",
                 pool: str = "mean") -> None:
        from mert_fairseq.evaluation.features import MERTFeatureExtractor, load_feature_extractor

        if pool not in POOLS:
            raise ProbeError(f"pool={pool!r}: expected one of {', '.join(POOLS)}")
        self.name, self.path, self.kind, self.window_seconds, self.pool = name, Path(path), kind, window_seconds, pool
        if kind == "random-init":
            from mert_fairseq.checkpoint.model_loading import load_mert_model
            from mert_fairseq.common.config_values import parse_conv_layers

            model, task_cfg = load_mert_model(path, random_init=True)
            conv = parse_conv_layers(model.cfg.conv_feature_layers)
            self.extractor = MERTFeatureExtractor("fairseq", model.float(), task_cfg.sample_rate, task_cfg.normalize,
                                                  [c[1] for c in conv], [c[2] for c in conv],
                                                  model.cfg.encoder_layers, device)
        elif kind == "hf":
            self.extractor = load_feature_extractor(hf_model=str(path), device=device)
        else:
            self.extractor = load_feature_extractor(checkpoint=str(path), device=device)
        self.sample_rate = self.extractor.sample_rate

    def identity(self) -> dict:
        files = sorted(self.path.rglob("*")) if self.path.is_dir() else [self.path]
        return {"source": self.kind, "files": [_file_identity(f) for f in files if f.is_file()],
                "layers": self.extractor.num_layers, "window_seconds": self.window_seconds, "pool": self.pool}

    def pooled(self, path: Path) -> np.ndarray:
        if self.pool == "mean":
            return self.extractor.extract_file(path, reduce="mean", window_seconds=self.window_seconds)
        frames = self.extractor.extract_file(path, reduce="frame", window_seconds=self.window_seconds)  # L x T x D
        return mean_std(frames, axis=1)  # L x 2D


class MFCCSource(FeatureSource):
    """MFCC + deltas + delta-deltas (the K-means teacher's features): mean and std over time, one layer."""

    def __init__(self, name: str = "mfcc") -> None:
        from mert_fairseq.prep.common import SAMPLE_RATE
        from mert_fairseq.prep.kmeans_features import FeatureSpec, MfccFeatures

        self.name, self.sample_rate, self.spec = name, SAMPLE_RATE, FeatureSpec()
        self.mfcc = MfccFeatures(self.spec)

    def identity(self) -> dict:
        return {"source": "mfcc", "spec": repr(self.spec), "pool": "mean+std"}

    def pooled(self, path: Path) -> np.ndarray:
        from mert_fairseq.data.audio import load_mono

        frames = self.mfcc(load_mono(path, self.sample_rate))  # T x 39
        return mean_std(frames, axis=0)[None].astype(np.float32)


def feature_source(spec: str, device: str = "cpu", pool: str = "mean") -> FeatureSource:
    """`mfcc`, `random-init:CKPT`, a checkpoint file or an HF folder; `name=spec` sets the display name;
    `pool` is the time pooling of MERT layers ("mean" or "mean+std")."""
    name, _, body = spec.partition("=") if re.match(r"^[\w.-]+=", spec) else ("", "", spec)
    if body == "mfcc":
        return MFCCSource(name or "mfcc")
    if body.startswith("random-init:"):
        path = body[len("random-init:"):]
        if not Path(path).is_file():
            raise ProbeError(f"{path}: checkpoint for random-init not found")
        return MERTSource(name or "random-init", path, "random-init", device=device, pool=pool)
    path = Path(body)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ProbeError(f"{path}: folder without config.json (not an exported HF model)")
        return MERTSource(name or path.name, body, "hf", device=device, pool=pool)
    if path.is_file():
        return MERTSource(name or path.stem, body, "fairseq", device=device, pool=pool)
    raise ProbeError(f"{spec}: not 'mfcc', 'random-init:CKPT', a checkpoint file or an HF folder")


def extract_pooled(source: FeatureSource, files: Sequence[Path], cache_dir: Optional[str | os.PathLike] = None,
                   progress: bool = True) -> np.ndarray:
    """Pooled features N x L x D for `files`, cached under cache_dir keyed by the model and the files."""
    from tqdm import tqdm

    cache = None
    if cache_dir is not None:
        key = {"model": source.identity(), "audio": [_file_identity(Path(f)) for f in files]}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        safe_name = re.sub(r"[^\w.-]", "_", source.name)
        cache = Path(cache_dir) / f"{safe_name}-{digest}.npy"
        if cache.is_file():
            logger.info("%s: cached features %s", source.name, cache)
            return np.load(cache)
    feats = np.stack([source.pooled(Path(f)) for f in tqdm(files, desc=f"features {source.name}", unit="clip",
                                                           disable=not progress)])
    if cache is not None:
        from mert_fairseq.evaluation.features import save_npy_atomic

        save_npy_atomic(cache, feats)
    return feats


def run_probes(sources: Sequence[FeatureSource], probe_set: ProbeSet, cache_dir: Optional[str] = None,
               progress: bool = True, **kwargs) -> Dict[str, List[dict]]:
    """{source name: [per-task results]} (see `probe_task`)."""
    missing = [f for f in probe_set.files if not Path(f).is_file()]
    if missing:
        raise ProbeError(f"{missing[0]}: audio file not found ({len(missing)} missing)")
    return {s.name: probe_all(extract_pooled(s, probe_set.files, cache_dir, progress), probe_set, **kwargs)
            for s in sources}


# ---------------------------------------------------------------------------------------------- outputs
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
