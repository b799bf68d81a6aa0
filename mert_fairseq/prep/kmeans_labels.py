"""HuBERT-recipe k-means labels: frame features (``kmeans_features``) -> MiniBatchKMeans (``kmeans_model``)
-> one label line per audio; the ``prepare_kmeans_labels.py`` command line.

Several label streams in one call (one k-means model per feature, e.g. the demo's pitch-bearing
pair): ``--feature mfcc+chroma`` with ``--kmeans-model DIR/{name}.npz`` fits and applies one model
per feature; ``--name`` gives the stream names (default: ``kmeans`` for the first feature, the feature
kind for the others, so ``mfcc+chroma`` -> ``kmeans`` and ``chroma``). Train on them with
``task.labels=[kmeans,chroma] model.untie_final_proj=true`` (``split_streams``).

``fit`` samples at most ``--max-fit-frames`` frames uniformly at random from a split (memory:
frames x dims x 4 bytes), fits k-means and saves its centroids with the feature settings as a data-only
``.npz`` (numeric and string arrays, read with ``allow_pickle=False``: nothing in a model file runs;
written atomically). Models of earlier versions were joblib pickles: they are refused, and ``convert
--trust-pickle OLD NEW.npz`` converts one the user trusts. ``apply`` labels splits with a saved model: ``{label_dir}/{split}.{name}`` and
``dict.{name}.txt`` (every cluster id with its count in that split). ``all`` does both.

Resuming after a kill (same command): ``fit`` saves the sampled frames of every ~``--shard-seconds``
of audio in ``.{model}.fit.partial/`` and extracts only the rest; the fit itself is seeded and
deterministic, so the model file is the one an uninterrupted run writes (a model already saved
for the same inputs and settings is kept). ``apply`` saves the labels of each shard in
``{label_dir}/.{split}.{name}.partial/`` and writes the final files at the end. ``apply`` also
runs as job i of n (``--shard-id/--num-shards``, a Slurm array or torchrun rank): it labels rows
``[i * N // n, (i + 1) * N // n)`` into ``{split}.{name}.part{i}of{n}`` for
``scripts/merge_label_parts.py --name {name}`` (see ``merge_parts``).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans
from tqdm import tqdm

from mert_fairseq.data.audio import AudioError, load_mono
from mert_fairseq.data.manifest import Manifest, ManifestError, check_audio, read_manifest
from mert_fairseq.prep.common import (
    SAMPLE_RATE, OutputError, Part, PartialWork, add_shard_args, file_sha256, num_label_frames, parse_list,
    plan_blocks, resolve_part, setup_logging,
)
from mert_fairseq.prep.kmeans_features import FEATURE_KINDS, Extractor, FeatureSpec, make_extractor
from mert_fairseq.prep.kmeans_model import (
    KMeansModel, convert_pickled_model, fit_kmeans, load_model, nearest_center, save_model, saved_identity,
)
from mert_fairseq.prep.merge_parts import LabelOutputs, write_labels

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- fit and apply


def sample_fit_frames(
    manifest: Manifest, extractor: Extractor, max_frames: int, seed: int, work: PartialWork | None = None,
    shard_samples: int = 600 * SAMPLE_RATE, on_shard_done: Callable[[int], None] | None = None,
) -> np.ndarray:
    """A uniform random sample of at most `max_frames` frames of the split -> [N, D] float32.

    With `work`, the frames picked from each shard of about `shard_samples` of audio are saved
    there and a re-run extracts only the shards not saved yet (same sample either way).
    """
    counts = np.array([num_label_frames(r.num_samples) for r in manifest.rows])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    chosen = np.sort(np.random.default_rng(seed).choice(offsets[-1], min(max_frames, offsets[-1]), replace=False))
    bounds = np.searchsorted(chosen, offsets)  # chosen[bounds[i]:bounds[i+1]] fall in row i
    rows = [i for i in range(len(counts)) if bounds[i + 1] > bounds[i]]
    bar = tqdm(total=len(rows), desc="features (fit)", unit="file")

    def pick(shard: range) -> list[np.ndarray]:  # [D, frames picked] per row of the shard
        picked = []
        for i in (rows[s] for s in shard):
            feats = extractor(load_mono(manifest.audio_path(manifest.rows[i])))
            picked.append(np.ascontiguousarray(feats[chosen[bounds[i] : bounds[i + 1]] - offsets[i]].T, np.float32))
            bar.update()
        return picked

    shards = plan_blocks([manifest.rows[i].num_samples for i in rows], shard_samples)
    with bar:
        if work is None:
            picked = [p for shard in shards for p in pick(shard)]
        else:
            bar.update(sum(len(shards[k]) for k in range(len(shards)) if work.done(k)))
            work.run(shards, pick, on_shard_done)
            picked = [p for k in range(len(shards)) for p in work.load(k)]
    return np.ascontiguousarray(np.concatenate(picked, axis=1).T, dtype=np.float32)



def kmeans_outputs(label_dir: str | Path, split: str, name: str, n_clusters: int, part: Part = Part()) -> LabelOutputs:
    return LabelOutputs(Path(label_dir), split, name, (name,), n_clusters, part)


def apply_kmeans(
    manifest: Manifest, extractor: Extractor, km: KMeansModel | MiniBatchKMeans, label_dir: str | Path, name: str,
    split: str,
    part: Part = Part(), shard_samples: int = 600 * SAMPLE_RATE, spec: FeatureSpec | None = None,
    on_shard_done: Callable[[int], None] | None = None,
) -> list[int] | None:
    """Write ``{label_dir}/{split}.{name}`` and ``dict.{name}.txt`` (or job `part`'s part files),
    resuming the shards saved by a killed run; returns the shards labelled now (None: complete)."""
    rows = part.slice(len(manifest.rows))
    centers = np.ascontiguousarray(km.cluster_centers_)
    identity = {"manifest": str(manifest.path.resolve()), "manifest_sha256": file_sha256(manifest.path),
                "centers_sha256": hashlib.sha256(centers.tobytes()).hexdigest(), "n_clusters": len(centers),
                "feature": asdict(spec) if spec else None, "shard_samples": int(shard_samples)}
    out = kmeans_outputs(label_dir, split, name, len(centers), part)
    if out.finished(identity):
        log.info("%s: k-means labels %s.%s%s are complete; nothing to do", label_dir, split, name, part.suffix)
        return None
    part_rows = manifest.rows[rows.start : rows.stop]
    check_audio(Manifest(manifest.path, manifest.root, part_rows), SAMPLE_RATE)
    shards = [range(rows.start + s.start, rows.start + s.stop)
              for s in plan_blocks([r.num_samples for r in part_rows], shard_samples)]
    bar = tqdm(total=len(rows), desc=f"k-means labels {split}{part.suffix}", unit="file")

    def label(shard: range) -> list[np.ndarray]:  # [1, frames] cluster ids per row
        out = []
        for j in shard:
            feats = extractor(load_mono(manifest.audio_path(manifest.rows[j])))
            out.append(nearest_center(centers, feats)[None])
            bar.update()
        return out

    with bar:
        return write_labels(out, identity, manifest, rows, shards, label, on_shard_done)


# ----------------------------------------------------------------------------- command line


def load_split(manifest_dir: str | Path, split: str) -> Manifest:
    manifest = read_manifest(Path(manifest_dir) / f"{split}.tsv")
    check_audio(manifest, SAMPLE_RATE)
    return manifest


def fit_partial_dir(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.parent / f".{model_path.name}.fit.partial"


def run_fit(args: argparse.Namespace, on_shard_done: Callable[[int], None] | None = None) -> None:
    spec = feature_spec(args)
    manifest = load_split(args.manifest_dir, args.split)
    shard_samples = max(1, int(args.shard_seconds * SAMPLE_RATE))
    identity = {"manifest": str(manifest.path.resolve()), "manifest_sha256": file_sha256(manifest.path),
                "feature": asdict(spec), "n_clusters": args.n_clusters, "max_fit_frames": args.max_fit_frames,
                "seed": args.seed, "shard_samples": shard_samples}
    if Path(args.kmeans_model).is_file() and saved_identity(args.kmeans_model) == identity:
        log.info("%s: already fitted on these inputs with these settings; kept", args.kmeans_model)
        return
    start = time.perf_counter()
    work = PartialWork(fit_partial_dir(args.kmeans_model), identity)
    extractor = make_extractor(spec, args.device)
    frames = sample_fit_frames(manifest, extractor, args.max_fit_frames, args.seed, work, shard_samples, on_shard_done)
    log.info("fitting %d clusters on %d frames x %d dims", args.n_clusters, *frames.shape)
    km = fit_kmeans(frames, args.n_clusters, args.seed)
    save_model(args.kmeans_model, km, spec, str(manifest.path.resolve()), identity)
    work.remove()
    log.info("saved %s (inertia %.4g, %.1f s)", args.kmeans_model, km.inertia_, time.perf_counter() - start)


def run_apply(args: argparse.Namespace, on_shard_done: Callable[[int], None] | None = None) -> None:
    km, spec = load_model(args.kmeans_model)
    if args.checkpoint and spec.kind == "mert":
        spec = FeatureSpec(**{**asdict(spec), "checkpoint": args.checkpoint})
    part = resolve_part(args.shard_id, args.num_shards)
    extractor = make_extractor(spec, args.device)
    for split in parse_list(args.splits):
        apply_kmeans(read_manifest(Path(args.manifest_dir) / f"{split}.tsv"), extractor, km, args.label_dir, args.name, split, part,
                     max(1, int(args.shard_seconds * SAMPLE_RATE)), spec, on_shard_done)
        log.info("wrote %s/%s.%s%s", args.label_dir, split, args.name, part.suffix)


def split_streams(args: argparse.Namespace) -> list[argparse.Namespace]:
    """One namespace per label stream: ``--feature a+b`` and/or ``--name x,y`` (same count) with a
    ``{name}`` placeholder in ``--kmeans-model``; a single stream is returned unchanged."""
    features = getattr(args, "feature", None)
    features = features.split("+") if features else None
    names = args.name.split(",") if getattr(args, "name", None) else None
    count = len(features or names or [None])
    if names is None:
        names = ["kmeans"] + (features[1:] if features else [])
    if count == 1 and len(names) == 1:  # "{name}" in --kmeans-model is allowed here too
        return [argparse.Namespace(**{**vars(args), "kmeans_model": args.kmeans_model.replace("{name}", names[0]),
                                      **({"name": names[0]} if hasattr(args, "name") else {})})]
    if features is not None and len(features) != len(names):
        raise ValueError(f"--feature {args.feature} has {len(features)} streams but --name {args.name} has {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--name {','.join(names)}: stream names must differ")
    if "{name}" not in args.kmeans_model:
        raise ValueError(f"--kmeans-model {args.kmeans_model}: with several streams it needs a {{name}} placeholder, "
                         "e.g. labels/{name}.npz (one model per stream)")
    return [argparse.Namespace(**{**vars(args), "name": name, "kmeans_model": args.kmeans_model.format(name=name),
                                  **({"feature": features[i]} if features else {})}) for i, name in enumerate(names)]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest-dir", required=True, help="folder holding {split}.tsv")
    p.add_argument("--kmeans-model", required=True, help="fitted model file (data-only .npz); with several "
                   "streams a pattern with {name}, e.g. labels/{name}.npz")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device of the feature extractor (default: cuda when available)")
    p.add_argument("--checkpoint", help="MERT checkpoint for --feature mert (apply: overrides the saved path)")
    p.add_argument("--shard-seconds", type=float, default=600.0, help="audio per resumable shard")


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="train", help="split to fit on")
    _feature_args(p, several=True)
    p.add_argument("--n-clusters", type=int, default=500, help="k-means clusters = label codes")
    p.add_argument("--max-fit-frames", type=int, default=500_000, help="frames sampled for fitting")
    p.add_argument("--seed", type=int, default=0, help="seed of the frame sampling and of k-means")


def _feature_args(p: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        p.add_argument("--feature", type=_feature_list, default="mfcc",
                       help="frame features: mfcc, chroma (CQT pitch class), cqt (84 log-CQT bins), chord (chroma relative to "
                       "the bass), onset (spectral flux per mel band) or mert (a MERT layer); several joined by '+' (e.g. mfcc+chroma) fit one model and write one label stream each")
    else:
        p.add_argument("--feature", choices=FEATURE_KINDS, default="mfcc",
                       help="frame features: MFCCs, CQT chroma (pitch class), 84 log-CQT bins, chroma relative to the "
                       "bass (chord), spectral flux (onset) or a MERT layer")
    p.add_argument("--layer", type=int, help="MERT layer for --feature mert (0 = CNN/input projection)")
    p.add_argument("--n-mfcc", type=int, default=13, help="MFCCs per frame for --feature mfcc")
    p.add_argument("--n-mels", type=int, default=40, help="mel bands the MFCCs are computed from")
    p.add_argument("--chroma-gain", type=float, default=10.0, help="chroma, cqt, chord: log(1 + gain x) compression")
    p.add_argument("--chord-smooth-frames", type=int, default=37,
                   help="chord: average the bass-relative chroma over this many frames (75 per second; 1: none)")
    p.add_argument("--onset-smooth-frames", type=int, default=1,
                   help="onset: average the flux over this many frames (onset density; 1: none)")
    p.add_argument("--onset-min-hz", type=float, default=0.0,
                   help="onset: only the mel bands centred at or above this frequency (e.g. 2000: percussion)")
    p.add_argument("--max-chunk-seconds", type=float, default=30.0, help="MERT input chunk length")


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="joblib model of an earlier version (or a bare sklearn KMeans pickle)")
    p.add_argument("dst", help="data-only .npz model to write")
    p.add_argument("--trust-pickle", action="store_true",
                   help="required: loading a pickle runs code stored in it; pass only for files you trust")
    p.add_argument("--checkpoint", help="MERT checkpoint for --feature mert (bare estimators only)")
    _feature_args(p)


def _apply_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--splits", default="train,valid", help="splits to label")
    p.add_argument("--label-dir", required=True, help="label folder written: {split}.{name} and dict.{name}.txt")
    p.add_argument("--name", default=None, help="label name: files {split}.{name}, dict.{name}.txt (default "
                   "kmeans); several streams: a comma list, one per feature (default kmeans, then the feature kinds)")
    add_shard_args(p)


def _feature_list(text: str) -> str:
    bad = [k for k in text.split("+") if k not in FEATURE_KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown feature {bad[0]!r} (choose from {', '.join(FEATURE_KINDS)}, "
                                         "several joined by '+')")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for command, adders, text in (
        ("fit", (_common, _fit_args), "fit k-means on a split and save it"),
        ("apply", (_common, _apply_args), "label splits with a saved model"),
        ("all", (_common, _fit_args, _apply_args), "fit, then label"),
        ("convert", (_convert_args,), "convert a trusted joblib model of an earlier version to .npz "
                                      "(feature settings: the saved ones, or the flags for a bare estimator)"),
    ):
        sp = sub.add_parser(command, help=text)
        for add in adders:
            add(sp)
    return p


def feature_spec(args: argparse.Namespace) -> FeatureSpec:
    return FeatureSpec(args.feature, args.n_mfcc, args.n_mels, args.checkpoint, args.layer, args.max_chunk_seconds,
                       args.chroma_gain, args.chord_smooth_frames, args.onset_smooth_frames,
                       args.onset_min_hz)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        if args.command == "convert":
            convert_pickled_model(args.src, args.dst, args.trust_pickle, feature_spec(args))
            return 0
        for stream in split_streams(args):
            if args.command in ("fit", "all"):
                run_fit(stream)
            if args.command in ("apply", "all"):
                run_apply(stream)
    except (ManifestError, AudioError, ValueError, FileNotFoundError, OutputError) as exc:
        log.error("%s", exc)
        return 1
    return 0
