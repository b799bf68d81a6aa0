"""Features for probes: every hidden state of a MERT model (fairseq checkpoint or exported HF folder, through
`mert_fairseq.evaluation.features`), mean-pooled over time -> one (layers + 1) x D array per clip
(`pool="mean+std"`: mean and standard deviation, (layers + 1) x 2D, the pooling of the MFCC baseline); the
`mfcc` baseline is the mean and standard deviation over time of MFCCs + deltas (one "layer");
`random-init:CKPT` is the checkpoint's architecture re-initialised from its own seed (what training started
from). Pooled features are cached per model and audio set; `run_probes` scores them (`probe.probe_all`)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mert_fairseq.evaluation.probe import POOLS, ProbeError, ProbeSet, probe_all

logger = logging.getLogger(__name__)


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
