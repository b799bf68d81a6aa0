"""Convert a folder of audio to 24 kHz mono 16-bit wav and write fairseq manifests.

Manifest format (``{split}.tsv``): line 1 is the absolute root of the converted audio, then one
``relpath<TAB>num_samples`` line per file. Files that cannot be used (unreadable, empty, too
short, or clashing with another file's output name) are logged and listed in
``{out_dir}/skipped.tsv`` (``path<TAB>reason``); the run goes on and fails only when nothing
usable remains. Conversion is resumable: an existing converted file that is a readable mono
wav at the target rate, newer than its source, is reused.

At scale (``--workers N``): files are converted in chunks of ``--chunk-size`` by a pool of N
processes with at most ``2 N`` chunks in flight, so memory stays bounded. After each chunk its
results are appended (one write, then fsync) to the journal ``{out_dir}/.prepare_manifest.journal``;
a re-run after a kill, or after new files were added, takes the journaled files whose source is
unchanged (same size and mtime) and whose output still exists without opening them, and converts
only the rest. The manifests are written atomically at the end and equal those of an
uninterrupted serial run byte for byte.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from mert_fairseq.data.audio import AudioError, load_mono, write_audio_atomic
from mert_fairseq.data.manifest import ManifestError, ManifestRow
from mert_fairseq.prep.common import OutputError, naming_disk_errors, output_file, parse_list, setup_logging

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = "wav,flac,ogg,mp3"
JOURNAL_NAME = ".prepare_manifest.journal"


def write_manifest(path: str | os.PathLike, root: str | os.PathLike, rows: Iterable[ManifestRow]) -> None:
    with output_file(path, "w") as f:
        f.write(f"{Path(root).resolve()}\n")
        for row in rows:
            f.write(f"{row.relpath}\t{row.num_samples}\n")


# ----------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class ConvertJob:
    source: Path
    target: Path
    relpath: str  # relative to the converted root, posix, ends in .wav
    target_rate: int
    min_samples: int


@dataclass(frozen=True)
class ConvertResult:
    job: ConvertJob
    num_samples: int | None = None
    reason: str | None = None  # set when the file was skipped
    reused: bool = False


def find_audio_files(root: Path, extensions: Sequence[str], exclude: Path | None = None) -> list[Path]:
    """Sorted audio files under `root` (recursive, case-insensitive extension), minus `exclude`."""
    suffixes = {"." + ext.lower().lstrip(".") for ext in extensions}
    files = []
    for directory, subdirs, names in os.walk(root, followlinks=True):
        if exclude is not None and Path(directory).resolve() == exclude:
            subdirs[:] = []
            continue
        subdirs.sort()
        files += [Path(directory) / n for n in names if Path(n).suffix.lower() in suffixes]
    return sorted(files)


def plan_jobs(
    files: Sequence[Path], root: Path, out_root: Path, target_rate: int, min_samples: int
) -> tuple[list[ConvertJob], list[tuple[Path, str]]]:
    """One job per file; files whose output name clashes with an earlier file's are skipped."""
    jobs, skipped, owners = [], [], {}
    for source in files:
        relpath = source.relative_to(root).with_suffix(".wav").as_posix()
        if relpath in owners:
            skipped.append((source, f"output {relpath} already produced from {owners[relpath]}"))
            continue
        owners[relpath] = source
        jobs.append(ConvertJob(source, out_root / relpath, relpath, target_rate, min_samples))
    return jobs, skipped


def _reusable_length(job: ConvertJob) -> int | None:
    """Length of an existing valid converted file (newer than its source), else None."""
    try:
        if job.target.stat().st_mtime < job.source.stat().st_mtime:
            return None
        info = sf.info(str(job.target))
    except Exception:
        return None
    ok = info.samplerate == job.target_rate and info.channels == 1 and info.frames >= job.min_samples
    return info.frames if ok else None


def convert_one(job: ConvertJob) -> ConvertResult:
    """Convert one file to mono 16-bit wav at the target rate (or reuse a valid earlier output)."""
    existing = _reusable_length(job)
    if existing is not None:
        return ConvertResult(job, existing, reused=True)
    try:
        wav = load_mono(job.source, job.target_rate)
    except AudioError as exc:
        return ConvertResult(job, reason=_strip_path(str(exc), job.source))
    if len(wav) < job.min_samples:
        seconds = len(wav) / job.target_rate
        return ConvertResult(job, reason=f"too short ({seconds:.3f} s < {job.min_samples / job.target_rate:g} s)")
    with naming_disk_errors(job.target):
        write_audio_atomic(job.target, np.clip(wav, -1.0, 1.0), job.target_rate)
    return ConvertResult(job, len(wav))


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def convert_chunk(jobs: Sequence[ConvertJob]) -> list[ConvertResult]:
    return [convert_one(job) for job in jobs]


class Journal:
    """Results of finished conversions, one JSON line per file, appended a chunk at a time.

    Line 1 holds the settings; a journal from other settings is started over. A line torn by a
    kill or a full disk (the last one) is dropped when the journal is opened again.
    """

    def __init__(self, path: Path, identity: dict):
        self.path, self.entries = Path(path), {}
        header = json.dumps(identity, sort_keys=True)
        lines = self._read_lines()
        if lines and lines[0] == header:
            for line in lines[1:]:
                with contextlib.suppress(ValueError, TypeError):
                    source, size, mtime_ns, num_samples, reason = json.loads(line)
                    self.entries[source] = (size, mtime_ns, num_samples, reason)
        else:
            if lines:
                log.info("%s: journal of other settings; starting over", self.path)
            with output_file(self.path, "w") as f:
                f.write(header + "\n")

    def _read_lines(self) -> list[str]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # torn last line: cut it off before appending again
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        return complete.decode("utf-8", errors="replace").splitlines()

    def lookup(self, job: ConvertJob) -> ConvertResult | None:
        """The journaled result of `job` if its source is unchanged and its output still exists."""
        entry = self.entries.get(str(job.source))
        if entry is None:
            return None
        size, mtime_ns, num_samples, reason = entry
        try:
            stat = job.source.stat()
            if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
                return None
            if reason is None and job.target.stat().st_mtime < stat.st_mtime:
                return None
        except OSError:
            return None
        return ConvertResult(job, num_samples, reason, reused=True)

    def append(self, results: Sequence[ConvertResult]) -> None:
        lines = []
        for r in results:
            with contextlib.suppress(OSError):  # a source that vanished is simply not journaled
                stat = r.job.source.stat()
                lines.append(json.dumps([str(r.job.source), stat.st_size, stat.st_mtime_ns, r.num_samples, r.reason]))
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode()
        with naming_disk_errors(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                view = memoryview(data)  # one append per chunk; a torn tail is dropped on the next open
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)


def _ordered_map(fn: Callable, chunks: Iterable[Sequence], workers: int) -> Iterator[list]:
    """fn(chunk) for each chunk, in order: in this process, or in `workers` processes with at
    most 2 * workers chunks submitted and not yet collected (bounded memory)."""
    if workers <= 1:
        yield from map(fn, chunks)
        return
    # fork (Linux): workers start at once with this process's imports, as DataLoader workers do
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=get_context(method), initializer=_init_worker) as pool:
        pending = collections.deque()
        for chunk in chunks:
            pending.append(pool.submit(fn, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def convert_all(
    jobs: Sequence[ConvertJob], workers: int = 1, journal: Journal | None = None, chunk_size: int = 64,
    on_chunk_done: Callable[[int], None] | None = None,
) -> list[ConvertResult]:
    """Run the jobs (in `workers` processes when > 1) with a progress bar, in job order; jobs the
    journal already holds are not run again, finished chunks are appended to it."""
    results: list[ConvertResult | None] = [journal.lookup(job) if journal else None for job in jobs]
    todo = [i for i, r in enumerate(results) if r is None]
    chunks = [todo[a : a + chunk_size] for a in range(0, len(todo), chunk_size)]
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="convert", unit="file") as bar:
        done = _ordered_map(convert_chunk, ([jobs[i] for i in chunk] for chunk in chunks), workers)
        for k, (chunk, chunk_results) in enumerate(zip(chunks, done)):
            for i, result in zip(chunk, chunk_results):
                results[i] = result
            if journal:
                journal.append(chunk_results)
            bar.update(len(chunk))
            if on_chunk_done:
                on_chunk_done(k)
    return results


# ----------------------------------------------------------------------------- split and run


def split_rows(rows: Sequence[ManifestRow], valid_percent: float, seed: int) -> tuple[list, list]:
    """Deterministic split: sort by path, draw round(n * valid_percent) valid rows (at least one
    when valid_percent > 0 and n > 1) with `random.Random(seed)`; both parts stay sorted."""
    if not 0.0 <= valid_percent < 1.0:
        raise ValueError(f"--valid-percent must be in [0, 1), got {valid_percent}")
    rows = sorted(rows, key=lambda r: r.relpath)
    n_valid = round(len(rows) * valid_percent)
    if valid_percent > 0 and n_valid == 0 and len(rows) > 1:
        n_valid = 1
    chosen = set(random.Random(seed).sample(range(len(rows)), n_valid))
    train = [r for i, r in enumerate(rows) if i not in chosen]
    valid = [r for i, r in enumerate(rows) if i in chosen]
    return train, valid


def write_skipped(path: Path, skipped: Sequence[tuple[Path, str]]) -> None:
    with output_file(path, "w") as f:
        for source, reason in skipped:
            f.write(f"{source}\t{reason}\n")


@dataclass(frozen=True)
class ManifestSummary:
    train: list[ManifestRow]
    valid: list[ManifestRow]
    skipped: list[tuple[Path, str]]
    converted: int
    reused: int


def prepare_manifest(
    root_dir: str | os.PathLike,
    converted_root_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    target_rate: int = 24_000,
    extensions: Sequence[str] = tuple(DEFAULT_EXTENSIONS.split(",")),
    valid_percent: float = 0.01,
    seed: int = 42,
    min_seconds: float = 1.0,
    workers: int = 1,
    chunk_size: int = 64,
    on_chunk_done: Callable[[int], None] | None = None,
) -> ManifestSummary:
    """Convert every audio file under `root_dir` and write train/valid manifests and skipped.tsv,
    resuming from the journal in `out_dir` (see the module docstring).

    Raises ManifestError when no usable file remains (after writing skipped.tsv).
    """
    root, out_root, out_dir = Path(root_dir).resolve(), Path(converted_root_dir).resolve(), Path(out_dir)
    if not root.is_dir():
        raise ManifestError(f"{root}: --root-dir is not a directory")
    files = find_audio_files(root, extensions, exclude=out_root)
    min_samples = int(np.ceil(min_seconds * target_rate))
    jobs, skipped = plan_jobs(files, root, out_root, target_rate, min_samples)
    identity = {"root": str(root), "converted_root": str(out_root), "target_rate": target_rate,
                "min_samples": min_samples}
    journal = Journal(out_dir / JOURNAL_NAME, identity)
    results = convert_all(jobs, workers, journal, chunk_size, on_chunk_done)
    skipped += [(r.job.source, r.reason) for r in results if r.reason]
    for source, reason in skipped:
        log.warning("skipped %s: %s", source, reason)
    write_skipped(out_dir / "skipped.tsv", skipped)
    good = [ManifestRow(r.job.relpath, r.num_samples) for r in results if not r.reason]
    if not good:
        raise ManifestError(
            f"{root}: no usable audio ({len(files)} file(s) with extensions {','.join(extensions)}; "
            f"{len(skipped)} skipped, see {out_dir / 'skipped.tsv'})"
        )
    train, valid = split_rows(good, valid_percent, seed)
    write_manifest(out_dir / "train.tsv", out_root, train)
    write_manifest(out_dir / "valid.tsv", out_root, valid)
    reused = sum(r.reused for r in results if not r.reason)
    return ManifestSummary(train, valid, skipped, len(good) - reused, reused)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root-dir", required=True, help="folder searched recursively for audio")
    p.add_argument("--converted-root-dir", required=True, help="where the 24 kHz mono wavs are written")
    p.add_argument("--out-dir", required=True, help="where train.tsv, valid.tsv and skipped.tsv go")
    p.add_argument("--target-rate", type=int, default=24_000, help="sampling rate of the converted wavs (Hz)")
    p.add_argument("--extension", default=DEFAULT_EXTENSIONS, help="comma-separated extensions")
    p.add_argument("--valid-percent", type=float, default=0.01, help="fraction of files for valid.tsv")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/valid split")
    p.add_argument("--min-seconds", type=float, default=1.0, help="skip files shorter than this")
    p.add_argument("--workers", type=int, default=1, help="conversion processes")
    p.add_argument("--chunk-size", type=int, default=64, help="files per task and per journal append")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        summary = prepare_manifest(
            args.root_dir, args.converted_root_dir, args.out_dir, args.target_rate,
            parse_list(args.extension), args.valid_percent, args.seed, args.min_seconds, args.workers,
            args.chunk_size,
        )
    except (ManifestError, OutputError) as exc:
        log.error("%s", exc)
        return 1
    rows = summary.train + summary.valid
    hours = sum(r.num_samples for r in rows) / args.target_rate / 3600
    log.info(
        "wrote %s/train.tsv (%d) and valid.tsv (%d): %.3f h; %d converted, %d reused, %d skipped",
        args.out_dir, len(summary.train), len(summary.valid), hours,
        summary.converted, summary.reused, len(summary.skipped),
    )
    return 0
