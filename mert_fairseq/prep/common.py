"""Small pieces shared by the data-preparation modules: frame rule, label and dictionary files,
output files that name themselves in disk errors, job sharding and resumable partial work."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from mert_fairseq.common.atomic_files import atomic_open

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
LABEL_HOP = 320  # samples per label frame at 24 kHz -> 75 Hz
LABEL_RATE = SAMPLE_RATE // LABEL_HOP


def num_label_frames(num_samples: int, hop: int = LABEL_HOP) -> int:
    """The project's frame rule: ``ceil(num_samples / hop)`` label frames per file."""
    return -(-int(num_samples) // hop)


def parse_list(text: str | Sequence[str] | None) -> list[str]:
    """'a,b, c' (or a list of such strings) -> ['a', 'b', 'c']."""
    if text is None:
        return []
    parts = [text] if isinstance(text, str) else list(text)
    return [item.strip() for part in parts for item in part.split(",") if item.strip()]


def split_name(manifest_file: str | os.PathLike) -> str:
    """'train.tsv' -> 'train'."""
    name = Path(manifest_file).name
    return name[: -len(".tsv")] if name.endswith(".tsv") else name


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,  # fairseq (imported by the package) may have configured logging already
    )


def write_dictionary(path: str | os.PathLike, counts: np.ndarray) -> None:
    """fairseq Dictionary file: one ``<code> <count>`` line for every code 0..len(counts)-1."""
    with output_file(path, "w") as f:
        for code, count in enumerate(np.asarray(counts, dtype=np.int64)):
            f.write(f"{code} {count}\n")


def format_label_line(codes: Iterable[int]) -> str:
    return " ".join(map(str, codes)) + "\n"


# ----------------------------------------------------------------------------- downloads


class DownloadError(ValueError):
    """A file that had to be downloaded is neither in the cache nor reachable; says where to put it."""


def hub_file(url: str, local_hint: str) -> Path:
    """The file of `url` in torch's hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded (hash-checked)
    when missing. No network (an offline node) is one DownloadError naming the file, the cache path and
    `local_hint` (the flag or variable that points to a local copy) instead of a socket traceback."""
    import torch.hub

    name = url.rsplit("/", 1)[-1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    if path.is_file():
        return path
    hash_prefix = name.rsplit("-", 1)[-1].split(".")[0] if "-" in name else None
    log.info("downloading %s -> %s", url, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix, progress=False)
    except (OSError, RuntimeError) as exc:  # URLError, socket errors, timeouts; RuntimeError: hash mismatch
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"{name} is not in the cache (looked for {path}) and downloading it from {url} failed ({reason}). "
            f"Offline: copy {name} to {path} (the cache follows $TORCH_HOME, default ~/.cache/torch), "
            f"or {local_hint}") from exc
    return path


# ----------------------------------------------------------------------------- output files

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class OutputError(OSError):
    """A final output could not be written (full disk, quota, read-only); the message names it."""


@contextlib.contextmanager
def naming_disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a disk error (ENOSPC, EDQUOT, EFBIG, EROFS) inside the block into an OutputError naming `path`."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        raise OutputError(exc.errno, f"{path}: cannot write ({os.strerror(exc.errno)})") from exc


class _NamedWrites:
    """A file whose write() disk errors name its final path (the rest is the file's own)."""

    def __init__(self, f: IO, path: str | os.PathLike):
        self._f, self._path = f, path

    def write(self, data):
        with naming_disk_errors(self._path):
            return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)


@contextlib.contextmanager
def output_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """``atomic_open`` whose disk errors name `path`: the complete file appears there, or nothing
    does (the temporary file is removed) and an OutputError says why."""
    with naming_disk_errors(path), atomic_open(path, mode) as f:
        yield _NamedWrites(f, path)


def write_json(path: str | os.PathLike, data: Mapping) -> None:
    with output_file(path, "w") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> dict | None:
    """The JSON object in `path`, or None when it is missing or unreadable (a marker to redo)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- sharding across jobs


@dataclass(frozen=True)
class Part:
    """Job `index` of `count` jobs that share one split (Slurm array task, torchrun rank, ...)."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}: need 0 <= --shard-id < --num-shards")

    @property
    def suffix(self) -> str:
        """'.part{i}of{n}' (empty for a single job, whose outputs are the final files)."""
        return "" if self.count == 1 else f".part{self.index}of{self.count}"

    def slice(self, num_items: int) -> range:
        """Contiguous item range of this part: items [i * N // n, (i + 1) * N // n)."""
        return range(self.index * num_items // self.count, (self.index + 1) * num_items // self.count)


def resolve_part(shard_id: int | None = None, num_shards: int | None = None,
                 env: Mapping[str, str] | None = None) -> Part:
    """The job's part: --shard-id/--num-shards when given, else a Slurm array task
    (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT), else torchrun's
    RANK of WORLD_SIZE, else the single part 0 of 1."""
    if (shard_id is None) != (num_shards is None):
        raise ValueError("give both --shard-id and --num-shards, or neither")
    if shard_id is not None:
        return Part(shard_id, num_shards)
    env = os.environ if env is None else env
    for index, count, first in (("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"),
                                ("RANK", "WORLD_SIZE", None)):
        if index in env and count in env:
            try:
                part = Part(int(env[index]) - int(env.get(first, 0) if first else 0), int(env[count]))
            except ValueError as exc:
                raise ValueError(f"{index}={env[index]} / {count}={env[count]} do not name a shard: {exc}") from exc
            log.info("shard %d of %d from %s/%s", part.index, part.count, index, count)
            return part
    return Part()


def add_shard_args(parser) -> None:
    """--shard-id/--num-shards on an argparse parser (see resolve_part)."""
    parser.add_argument("--shard-id", type=int, help="this job's part, 0..num-shards-1 (default: "
                        "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, else torchrun's RANK, else 0)")
    parser.add_argument("--num-shards", type=int, help="number of jobs sharing each split (default: "
                        "SLURM_ARRAY_TASK_COUNT, else WORLD_SIZE, else 1); merge their parts with "
                        "scripts/merge_label_parts.py")


# ----------------------------------------------------------------------------- resumable work


def plan_blocks(num_samples: Sequence[int], block_samples: int) -> list[range]:
    """Consecutive row ranges of at most `block_samples` samples (a longer row is a block alone)."""
    blocks, begin, total = [], 0, 0
    for i, n in enumerate(num_samples):
        if i > begin and total + n > block_samples:
            blocks.append(range(begin, i))
            begin, total = i, 0
        total += n
    if begin < len(num_samples):
        blocks.append(range(begin, len(num_samples)))
    return blocks


class PartialWork:
    """Finished blocks of a long job, one ``block_NNNNNN.npz`` each, in a hidden directory.

    ``meta.json`` holds the job's identity (inputs and settings); work left by another identity
    is discarded. Each block file appears atomically, so a kill loses at most the block in
    progress; a re-run skips the blocks already saved.
    """

    def __init__(self, directory: Path, identity: Mapping):
        self.directory, self.identity = Path(directory), json.loads(json.dumps(identity))
        meta = self.directory / "meta.json"
        if self.directory.exists() and read_json(meta) != self.identity:
            log.warning("%s: partial work from other settings or another input; starting over", self.directory)
            shutil.rmtree(self.directory)
        if not meta.is_file():
            self.directory.mkdir(parents=True, exist_ok=True)
            write_json(meta, self.identity)

    def path(self, block: int) -> Path:
        return self.directory / f"block_{block:06d}.npz"

    def done(self, block: int) -> bool:
        return self.path(block).is_file()

    def save(self, block: int, arrays: Sequence[np.ndarray]) -> None:
        """Save a list of arrays [..., T_i] (same leading shape) as one block."""
        lengths = np.array([a.shape[-1] for a in arrays], dtype=np.int64)
        joined = np.concatenate(arrays, axis=-1) if arrays else np.zeros((0,), np.int16)
        with output_file(self.path(block), "wb") as f:
            np.savez(f, data=joined, lengths=lengths)

    def load(self, block: int) -> list[np.ndarray]:
        with np.load(self.path(block)) as saved:
            lengths = saved["lengths"]
            if not len(lengths):
                return []
            return np.split(saved["data"], np.cumsum(lengths)[:-1], axis=-1)

    def run(self, blocks: Sequence[range], compute: Callable[[range], Sequence[np.ndarray]],
            on_block_done: Callable[[int], None] | None = None) -> list[int]:
        """Compute and save every block not saved yet, in order; returns their indices."""
        todo = [k for k in range(len(blocks)) if not self.done(k)]
        for k in todo:
            self.save(k, compute(blocks[k]))
            if on_block_done:
                on_block_done(k)
        return todo

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
