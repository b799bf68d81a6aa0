"""A fitted k-means model: MiniBatchKMeans fitting, nearest-centroid assignment, and the model file: its
centroids with the feature settings as a data-only ``.npz`` (numeric and string arrays, read with
``allow_pickle=False``: nothing in a model file runs; written atomically). Models of earlier versions were
joblib pickles: they are refused, and ``convert_pickled_model`` (``prepare_kmeans_labels.py convert
--trust-pickle OLD NEW.npz``) converts one the user trusts."""
from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.cluster import MiniBatchKMeans

from mert_fairseq.prep.common import output_file
from mert_fairseq.prep.kmeans_features import FeatureSpec

log = logging.getLogger(__name__)

MODEL_FORMAT = "mert-fairseq-kmeans/2"  # .npz of centroids + settings (/1: the joblib pickle of earlier versions)


def fit_kmeans(
    frames: np.ndarray, n_clusters: int, seed: int = 0, batch_size: int = 10_000, n_init: int = 3
) -> MiniBatchKMeans:
    if len(frames) < n_clusters:
        raise ValueError(f"only {len(frames)} frames to fit {n_clusters} clusters; lower --n-clusters")
    km = MiniBatchKMeans(
        n_clusters=n_clusters, init="k-means++", batch_size=batch_size, n_init=n_init, max_iter=100,
        max_no_improvement=100, reassignment_ratio=0.0, random_state=seed,
    )
    return km.fit(frames)


@dataclass(frozen=True)
class KMeansModel:
    """A saved k-means model: the centroids (K x D; named as sklearn's fitted attribute) and nothing else."""

    cluster_centers_: np.ndarray

    @property
    def n_clusters(self) -> int:
        return len(self.cluster_centers_)


def nearest_center(centers: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (Euclidean) of every row of feats [T, D], in the centroids' dtype."""
    from sklearn.metrics import pairwise_distances_argmin

    centers = np.asarray(centers)
    return pairwise_distances_argmin(np.asarray(feats, dtype=centers.dtype), centers).astype(np.int32)


def _npz_bytes(arrays: dict) -> bytes:
    """An .npz archive of `arrays` with fixed timestamps, so the same model gives the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return buf.getvalue()


def save_model(path: str | Path, km, spec: FeatureSpec, fitted_on: str, identity: dict | None = None) -> None:
    """Write `km`'s centroids (a fitted sklearn model or a KMeansModel) and the settings as a data-only .npz."""
    if Path(path).suffix == ".joblib":
        log.warning("%s: k-means models are saved as data-only .npz (not joblib) whatever the name; "
                    "name the file .npz", path)
    arrays = {"format": MODEL_FORMAT, "cluster_centers": np.ascontiguousarray(km.cluster_centers_),
              "feature": json.dumps(asdict(spec), sort_keys=True), "fitted_on": fitted_on,
              "identity": json.dumps(identity, sort_keys=True)}
    with output_file(path, "wb") as f:
        f.write(_npz_bytes(arrays))


PICKLE_CONTAINERS = (b"x", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00")  # joblib: zlib, gzip, bz2, xz, lzma


def _pickle_refusal(path: str | Path) -> str:
    return (f"{path}: cannot load k-means model: this is a pickle (joblib) file, the format of earlier versions; "
            "loading it would run whatever code it holds, so it is refused. If you trust the file, convert it once "
            f"to the data-only format: python scripts/prepare_kmeans_labels.py convert --trust-pickle {path} "
            f"{Path(path).with_suffix('.npz')}")


def _read_model_npz(path: str | Path) -> dict:
    """The arrays of a model file, read without pickle; ValueError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ValueError(f"{path}: cannot load k-means model ({exc.strerror or exc})") from exc
    if head != b"PK\x03\x04":  # not a zip (.npz) archive
        if head[:1] == b"\x80" or head.startswith(PICKLE_CONTAINERS):
            raise ValueError(_pickle_refusal(path))
        raise ValueError(f"{path}: cannot load k-means model (not an .npz model written by prepare_kmeans_labels.py)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except Exception as exc:  # a damaged archive, or an object array (which would need pickle)
        raise ValueError(f"{path}: cannot load k-means model ({exc})") from exc
    if str(arrays.get("format", "")) != MODEL_FORMAT:
        raise ValueError(f"{path}: cannot load k-means model (format {str(arrays.get('format'))!r}, "
                         f"expected {MODEL_FORMAT!r})")
    return arrays


def _spec_from_json(path: str | Path, text: str) -> FeatureSpec:
    fields = json.loads(text)
    unknown = set(fields) - set(FeatureSpec.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: unknown feature settings {sorted(unknown)}")
    return FeatureSpec(**fields)


def saved_identity(path: str | Path) -> dict | None:
    """The inputs and settings a saved model was fitted with (None when unknown or unreadable)."""
    try:
        return json.loads(str(_read_model_npz(path)["identity"]))
    except (ValueError, KeyError):
        return None


def load_model(path: str | Path) -> tuple[KMeansModel, FeatureSpec]:
    arrays = _read_model_npz(path)
    try:
        centers = np.asarray(arrays["cluster_centers"])
        spec = _spec_from_json(path, str(arrays["feature"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot load k-means model ({exc})") from exc
    if centers.ndim != 2 or centers.dtype.kind != "f" or not len(centers) or not np.isfinite(centers).all():
        raise ValueError(f"{path}: cannot load k-means model (centroids must be a finite K x D float array, "
                         f"got {centers.dtype} {centers.shape})")
    return KMeansModel(centers), spec


def convert_pickled_model(src: str | Path, dst: str | Path, trust_pickle: bool, spec: FeatureSpec) -> None:
    """A joblib model of earlier versions (or a bare sklearn KMeans, saved with `spec`) -> data-only .npz.
    Unpickling runs code from the file: only with `trust_pickle`."""
    if not trust_pickle:
        raise ValueError(f"{src}: converting a pickle file loads it, which runs any code it holds; "
                         "pass --trust-pickle if you trust where it comes from")
    import joblib  # only here: nothing else in mert-fairseq unpickles

    try:
        saved = joblib.load(src)
    except Exception as exc:
        raise ValueError(f"{src}: cannot load the pickle ({type(exc).__name__}: {exc})") from exc
    if isinstance(saved, dict) and saved.get("format") == "mert-fairseq-kmeans/1":
        km, spec, fitted_on, identity = saved["kmeans"], FeatureSpec(**saved["feature"]), saved["fitted_on"], None
    elif hasattr(saved, "cluster_centers_"):
        km, fitted_on, identity = saved, str(src), None
        log.info("%s: a bare k-means estimator; saved with feature settings %s", src, asdict(spec))
    else:
        raise ValueError(f"{src}: not a k-means model (neither prepare_kmeans_labels.py's nor an sklearn KMeans)")
    save_model(dst, km, spec, fitted_on, identity)
    log.info("converted %s -> %s (%d clusters)", src, dst, len(km.cluster_centers_))
