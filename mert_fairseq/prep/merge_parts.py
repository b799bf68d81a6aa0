"""Label files written in parts by several jobs, and the merge that joins them.

A labelling job (EnCodec codes, K-means labels) named ``name`` writes, for split ``split`` and each
label stream ``label`` (``encodec_0..7`` or the K-means name), into one label directory:

- one job (the default): ``{split}.{label}``, ``dict.{label}.txt`` and the marker
  ``.{split}.{name}.done.json``;
- job i of n (``--shard-id i --num-shards n``, a Slurm array task or a torchrun rank): the
  contiguous manifest rows ``[i * N // n, (i + 1) * N // n)`` (EnCodec: whole resume blocks) as
  ``{split}.{label}.part{i}of{n}`` and the marker ``.{split}.{name}.part{i}of{n}.done.json``
  recording its row range, settings and code counts.

``merge_parts`` joins the n parts in manifest order after checking that all n are there, that
they were made from the same manifest (unchanged since) with the same settings, and that their
row ranges cover every manifest row exactly once; the final files are written atomically and
are byte for byte those of a single job. Then the part files are removed.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mert_fairseq.prep.common import (
    OutputError, Part, PartialWork, file_sha256, format_label_line, num_label_frames, output_file, parse_list,
    read_json, setup_logging, write_dictionary, write_json,
)
from mert_fairseq.data.manifest import Manifest

log = logging.getLogger(__name__)


class MergeError(ValueError):
    """Parts that cannot be merged (missing, from other settings, rows not covered once)."""


@dataclass(frozen=True)
class LabelOutputs:
    """The files one labelling job (or one part of it) writes for one split."""

    directory: Path
    split: str
    name: str  # job name in marker files: "encodec" or the K-means label name
    labels: tuple[str, ...]  # label streams: ("encodec_0", ..., "encodec_7") or ("kmeans",)
    vocab: int  # codes per stream (dictionary size)
    part: Part = Part()

    def label_path(self, label: str) -> Path:
        return self.directory / f"{self.split}.{label}{self.part.suffix}"

    def dict_path(self, label: str) -> Path:
        return self.directory / f"dict.{label}.txt"

    @property
    def marker(self) -> Path:
        return self.directory / f".{self.split}.{self.name}{self.part.suffix}.done.json"

    @property
    def partial_dir(self) -> Path:
        return self.directory / f".{self.split}.{self.name}{self.part.suffix}.partial"

    def outputs(self) -> list[Path]:
        paths = [self.label_path(label) for label in self.labels]
        return paths + ([self.dict_path(label) for label in self.labels] if self.part.count == 1 else [])

    def finished(self, identity: dict) -> bool:
        """True when the marker says these outputs are complete for `identity`."""
        marker = read_json(self.marker)
        return bool(marker) and marker.get("identity") == identity and all(p.is_file() for p in self.outputs())

    def work(self, identity: dict) -> PartialWork:
        return PartialWork(self.partial_dir, {**identity, "part": [self.part.index, self.part.count]})


def write_labels(
    out: LabelOutputs, identity: dict, manifest: Manifest, rows: range, blocks: Sequence[range],
    compute: Callable[[range], Sequence[np.ndarray]], on_block_done: Callable[[int], None] | None = None,
) -> list[int] | None:
    """Label manifest `rows` (cut in resume `blocks`, global row ranges) with `compute`, which gives
    codes [streams, ceil(n / 320)] for each row of a block; resumes saved blocks, then writes the
    outputs of `out`. Returns the blocks computed now, or None when `out` was already complete."""
    if out.finished(identity):
        log.info("%s: %s labels for %s are complete; nothing to do", out.directory, out.name, out.split)
        return None
    work = out.work(identity)
    computed = work.run(blocks, compute, on_block_done)
    assemble(out, identity, work, manifest, rows, len(blocks))
    return computed


def assemble(out: LabelOutputs, identity: dict, work: PartialWork, manifest: Manifest, rows: range,
             num_blocks: int) -> None:
    """Write the label files of `out` from the saved blocks, then the dictionaries (one job) or
    the code counts in the part marker (job i of n), then the marker; remove the saved blocks."""
    counts = np.zeros((len(out.labels), out.vocab), np.int64)
    saved = (codes for k in range(num_blocks) for codes in work.load(k))
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(output_file(out.label_path(label), "w")) for label in out.labels]
        for j in rows:
            row, codes = manifest.rows[j], next(saved, None)
            if codes is None or codes.shape != (len(out.labels), num_label_frames(row.num_samples)):
                got = "nothing" if codes is None else f"codes {tuple(codes.shape)}"
                raise RuntimeError(f"{work.directory}: {got} saved for {manifest.where(row)}; delete it and run again")
            for i, f in enumerate(files):
                f.write(format_label_line(codes[i].tolist()))
                counts[i] += np.bincount(codes[i], minlength=out.vocab)
        if next(saved, None) is not None:
            raise RuntimeError(f"{work.directory}: more rows saved than {len(rows)}; delete it and run again")
    marker = {"identity": identity, "rows": [rows.start, rows.stop], "num_rows": len(manifest.rows),
              "labels": list(out.labels), "vocab": out.vocab, "part": [out.part.index, out.part.count]}
    if out.part.count == 1:
        for i, label in enumerate(out.labels):
            write_dictionary(out.dict_path(label), counts[i])
    else:
        marker["counts"] = counts.tolist()
    write_json(out.marker, marker)
    work.remove()


# ----------------------------------------------------------------------------- merge

_PART = re.compile(r"\.part(\d+)of(\d+)\.done\.json$")


def find_parts(directory: Path, split: str, name: str) -> dict[int, dict[int, Path]]:
    """{num_parts: {index: marker path}} of the part markers of `split`/`name` in `directory`."""
    found: dict[int, dict[int, Path]] = {}
    for path in directory.glob(f".{split}.{name}.part*of*.done.json"):
        match = _PART.search(path.name)
        if match and path.name == f".{split}.{name}.part{match[1]}of{match[2]}.done.json":
            found.setdefault(int(match[2]), {})[int(match[1])] = path
    return found


def _load_markers(directory: Path, split: str, name: str) -> list[tuple[Path, dict]]:
    found = find_parts(directory, split, name)
    if not found:
        raise MergeError(f"{directory}: no parts of {split}.{name} to merge (a job run with --shard-id I "
                         f"--num-shards N leaves .{split}.{name}.partIofN.done.json when it finishes)")
    if len(found) > 1:
        raise MergeError(f"{directory}: parts of {split}.{name} from runs with different --num-shards "
                         f"{sorted(found)}; delete the stale ones")
    (count, markers), = found.items()
    missing = [i for i in range(count) if i not in markers]
    if missing:
        names = ", ".join(f"part {i} of {count} ({directory}/.{split}.{name}.part{i}of{count}.done.json)"
                          for i in missing)
        raise MergeError(f"{split}.{name}: missing {names}; run those jobs (--shard-id I --num-shards {count}, "
                         f"or SLURM_ARRAY_TASK_ID=I) to completion, then merge again")
    loaded = []
    for i in range(count):
        marker = read_json(markers[i])
        if not marker or "identity" not in marker:
            raise MergeError(f"{markers[i]}: unreadable part marker; run part {i} of {count} again")
        loaded.append((markers[i], marker))
    return loaded


def check_parts(markers: Sequence[tuple[Path, dict]]) -> None:
    """Same identity, labels and row count everywhere; row ranges tile [0, num_rows) in order;
    the manifest is still the one the parts were made from."""
    first_path, first = markers[0]
    expected_end = 0
    for path, marker in markers:
        for key in ("identity", "labels", "vocab", "num_rows"):
            if marker.get(key) != first.get(key):
                raise MergeError(f"{path}: {key} differs from {first_path}; parts were made with other "
                                 "settings or another manifest")
        start, stop = marker["rows"]
        if start != expected_end:
            kind = "gap" if start > expected_end else "overlap"
            raise MergeError(f"{path}: rows start at {start}, previous part ended at {expected_end} ({kind})")
        expected_end = stop
    if expected_end != first["num_rows"]:
        raise MergeError(f"{markers[-1][0]}: parts end at row {expected_end}, manifest has {first['num_rows']} rows")
    manifest = Path(first["identity"].get("manifest", ""))
    digest = first["identity"].get("manifest_sha256")
    if digest:
        if not manifest.is_file():
            raise MergeError(f"{manifest}: manifest the parts were made from is not found")
        if file_sha256(manifest) != digest:
            raise MergeError(f"{manifest}: manifest changed since the parts were made; label it again")


def _copy_counting_lines(source: Path, target, expected: int) -> None:
    lines = 0
    with open(source, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            lines += block.count(b"\n")
            target.write(block)
    if lines != expected:
        raise MergeError(f"{source}: {lines} lines, its marker says {expected} rows")


def merge_parts(directory: str | Path, split: str, name: str, keep_parts: bool = False) -> LabelOutputs:
    """Join the parts of `split`/`name` in `directory` into the final files (see module docstring)."""
    directory = Path(directory)
    markers = _load_markers(directory, split, name)
    check_parts(markers)
    first = markers[0][1]
    labels, vocab, count = tuple(first["labels"]), int(first["vocab"]), len(markers)
    parts = [LabelOutputs(directory, split, name, labels, vocab, Part(i, count)) for i in range(count)]
    final = LabelOutputs(directory, split, name, labels, vocab)
    final.marker.unlink(missing_ok=True)  # finished again only when every final file is rewritten
    for i, label in enumerate(labels):
        for part in parts:
            if not part.label_path(label).is_file():
                raise MergeError(f"{part.label_path(label)}: part file not found although {part.marker} exists")
        with output_file(final.label_path(label), "wb") as f:
            for part, (_, marker) in zip(parts, markers):
                start, stop = marker["rows"]
                _copy_counting_lines(part.label_path(label), f, stop - start)
        write_dictionary(final.dict_path(label), np.sum([np.asarray(m["counts"][i]) for _, m in markers], axis=0))
    write_json(final.marker, {"identity": first["identity"], "rows": [0, first["num_rows"]],
                              "num_rows": first["num_rows"], "labels": list(labels), "vocab": vocab, "part": [0, 1]})
    if not keep_parts:
        for part in parts:
            for path in [part.label_path(label) for label in labels] + [part.marker]:
                path.unlink(missing_ok=True)
    log.info("%s: merged %d parts of %s.%s (%d rows)", directory, count, split, name, first["num_rows"])
    return final


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Join label parts written by sharded jobs (--shard-id/--num-shards).")
    p.add_argument("--label-dir", required=True, help="folder the sharded jobs wrote to")
    p.add_argument("--splits", default="train", help="comma-separated splits (train,valid)")
    p.add_argument("--name", required=True, help="job name: 'encodec' for EnCodec labels, the --name of K-means")
    p.add_argument("--keep-parts", action="store_true", help="keep the part files after merging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        for split in parse_list(args.splits):
            merge_parts(args.label_dir, split, args.name, args.keep_parts)
    except (MergeError, OutputError) as exc:
        log.error("%s", exc)
        return 1
    return 0
