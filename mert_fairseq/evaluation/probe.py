"""MARBLE-style probing of frozen features: the labelled clips (a CSV of files and task columns) and the
scores of a linear model per task and layer (pooled features from ``probe_features``; the command line,
table and plots: ``probe_report``).

    probe_set = read_probe_csv("metadata.csv", tasks=["key", "mode", "tempo_bpm:regression"])
    sources = [feature_source("runs/demo/checkpoints/checkpoint_last.pt"), feature_source("mfcc"),
               feature_source("random-init:runs/demo/checkpoints/checkpoint_last.pt")]
    results = run_probes(sources, probe_set, folds=5, cache_dir="probe_cache")  # probe_features
    print(format_table(results))  # probe_report

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
