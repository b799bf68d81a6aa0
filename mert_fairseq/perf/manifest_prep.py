"""Benchmark of manifest preparation at scale: files/s of ``prepare_manifest`` on many tiny files.

Writes `--files` synthetic 24 kHz mono wavs of `--seconds` each (not timed), then for each
``--workers`` value converts them into a fresh folder (timed), and finally re-runs the last one
(every file journaled: the resume/no-op cost). Prints one JSON line per run: wall seconds,
files/s, CPU seconds (this process + its finished workers) per 1,000 files, peak RSS.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from mert_fairseq.prep.common import SAMPLE_RATE, parse_list
from mert_fairseq.prep.manifest import prepare_manifest


def write_tiny_files(root: Path, count: int, seconds: float, per_folder: int = 1000) -> None:
    """`count` noise wavs of `seconds` in folders of `per_folder` files (existing folders are kept:
    a folder is written under a temporary name and renamed when complete)."""
    for folder in range(-(-count // per_folder)):
        final = root / f"{folder:05d}"
        if final.is_dir():
            continue
        partial = root / f".{folder:05d}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        rng = np.random.default_rng(folder)
        for i in range(folder * per_folder, min(count, (folder + 1) * per_folder)):
            _write_noise(partial / f"{i:07d}.wav", seconds, rng)
        partial.rename(final)


def _write_noise(path: Path, seconds: float, rng: np.random.Generator) -> None:
    wav = 0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32)
    sf.write(str(path), wav, SAMPLE_RATE, subtype="PCM_16")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_run(raw: Path, work: Path, workers: int, chunk_size: int, label: str) -> dict:
    cpu, start = _cpu_seconds(), time.perf_counter()
    summary = prepare_manifest(raw, work / "conv", work / "out", valid_percent=0.01, min_seconds=0.05,
                               workers=workers, chunk_size=chunk_size)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    files = len(summary.train) + len(summary.valid) + len(summary.skipped)
    return {"run": label, "workers": workers, "files": files, "converted": summary.converted,
            "reused": summary.reused, "wall_s": round(wall, 2), "files_per_s": round(files / wall, 1),
            "cpu_s_per_1000_files": round(1000 * cpu / files, 3),
            "peak_rss_mb_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "peak_rss_mb_largest_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=100_000, help="synthetic files to write and convert")
    p.add_argument("--seconds", type=float, default=0.1, help="length of each synthetic file")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    p.add_argument("--chunk-size", type=int, default=64, help="files per task and per journal append")
    p.add_argument("--work-dir", "--dir", help="scratch folder (default: a temporary one, removed at the end)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("mert_fairseq").setLevel(logging.WARNING)
    scratch = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_manifest_"))
    try:
        raw = scratch / "raw"
        start = time.perf_counter()
        write_tiny_files(raw, args.files, args.seconds)
        print(json.dumps({"files": args.files, "seconds_each": args.seconds,
                          "written_in_s": round(time.perf_counter() - start, 1)}), flush=True)
        for workers in map(int, parse_list(args.workers)):
            work = scratch / f"workers{workers}"
            shutil.rmtree(work, ignore_errors=True)
            print(json.dumps(timed_run(raw, work, workers, args.chunk_size, "fresh")), flush=True)
        print(json.dumps(timed_run(raw, work, workers, args.chunk_size, "rerun (all journaled)")), flush=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0
