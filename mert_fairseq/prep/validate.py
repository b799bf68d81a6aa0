"""Check that manifests, audio and label files agree, before a training run finds out.

For every split: the manifest parses; every audio file exists, has the expected sample rate, is
mono and has the number of samples the manifest says. For every label: ``dict.{label}.txt`` is a
well-formed fairseq dictionary, ``{split}.{label}`` has one line per manifest row, each line's
length is within 1 of ``num_samples * label_rate / sample_rate``, and every code is in the
dictionary. Packed rows (``shard.zip:offset:length``, scripts/pack_audio.py) are checked the same
way through the member's header, and a shard too short for a row is reported. Every problem is reported as ``file:line: problem``; any problem -> exit status 1.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mert_fairseq.data.audio import AudioError
from mert_fairseq.data.audio_reader import audio_info, parse_packed
from mert_fairseq.prep.common import LABEL_RATE, SAMPLE_RATE, parse_list
from mert_fairseq.data.manifest import Manifest, ManifestError, ManifestRow, audio_problems, parse_manifest


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # split -> rows
    seconds: dict[str, float] = field(default_factory=dict)  # split -> audio seconds
    labels: list[str] = field(default_factory=list)

    def summary(self) -> str:
        splits = ", ".join(f"{s} ({self.rows[s]} files, {self.seconds[s] / 3600:.3f} h)" for s in self.rows)
        labels = ", ".join(self.labels) if self.labels else "none checked"
        return f"OK: {splits}; labels: {labels}"


def read_dictionary(path: Path) -> tuple[set[str], list[str]]:
    """Symbols of a fairseq dictionary file (``<symbol> <count>`` lines) and its problems."""
    if not path.is_file():
        return set(), [f"{path}: dictionary file not found"]
    symbols, problems = set(), []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            problems.append(f"{path}:{number}: expected '<symbol> <count>', got {line!r}")
        elif fields[0] in symbols:
            problems.append(f"{path}:{number}: duplicate symbol {fields[0]!r}")
        else:
            symbols.add(fields[0])
    if not symbols and not problems:
        problems.append(f"{path}: dictionary is empty")
    return symbols, problems


def label_problems(
    path: Path, manifest: Manifest, dictionary: Path, symbols: set[str], sample_rate: int, label_rate: float
) -> list[str]:
    """Problems of one label file against its manifest rows and dictionary."""
    if not path.is_file():
        return [f"{path}: label file not found"]
    lines = path.read_text().splitlines()
    n_rows = len(manifest.path.read_text().splitlines()) - 1  # data lines, malformed ones included
    problems = []
    if len(lines) < n_rows:
        problems.append(f"{path}:{len(lines) + 1}: missing line(s): {len(lines)} lines, "
                        f"{manifest.path} has {n_rows} rows")
    elif len(lines) > n_rows:
        problems.append(f"{path}:{n_rows + 1}: extra line(s): {len(lines)} lines, {manifest.path} has {n_rows} rows")
    for row in manifest.rows:
        number = row.line - 1  # label line i <-> manifest line i + 1 (line 1 is the root)
        if number <= len(lines):
            where, codes = f"{path}:{number}", lines[number - 1].split()
            problems += _line_problems(where, codes, row.num_samples, dictionary, symbols, sample_rate, label_rate)
    return problems


def _line_problems(
    where: str, codes: list[str], num_samples: int, dictionary: Path, symbols: set[str],
    sample_rate: int, label_rate: float,
) -> list[str]:
    problems = []
    expected = num_samples * label_rate / sample_rate
    if abs(len(codes) - expected) > 1:
        problems.append(f"{where}: {len(codes)} labels, expected {expected:.2f} +- 1 for {num_samples} samples")
    unknown = sorted(set(codes) - symbols, key=lambda c: (len(c), c))
    if unknown and symbols:
        shown = " ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        problems.append(f"{where}: {len(unknown)} code(s) not in {dictionary}: {shown}")
    return problems


def row_audio_problems(manifest: Manifest, row: ManifestRow, sample_rate: int) -> list[str]:
    """`audio_problems` for plain rows; the same header checks for packed rows, through the shard."""
    if parse_packed(row.relpath) is None:
        return audio_problems(manifest, row, sample_rate)
    where = manifest.where(row)
    try:
        frames, sr, channels = audio_info(manifest.audio_path(row))
    except AudioError as exc:
        return [f"{where}: {exc}"]
    problems = []
    if sr != sample_rate:
        problems.append(f"{where}: {row.relpath}: sample rate {sr}, expected {sample_rate}")
    if channels != 1:
        problems.append(f"{where}: {row.relpath}: {channels} channels, expected mono")
    if frames != row.num_samples:
        problems.append(f"{where}: {row.relpath}: has {frames} samples, manifest says {row.num_samples}")
    return problems


def infer_labels(label_dir: Path) -> list[str]:
    """Label names from the ``dict.{label}.txt`` files in `label_dir`, sorted naturally."""
    names = [p.name[len("dict."): -len(".txt")] for p in label_dir.glob("dict.*.txt")]
    return sorted(names, key=lambda n: (n.rstrip("0123456789"), len(n), n))


def validate(
    manifest_dir: str | Path, label_dir: str | Path | None, splits: Sequence[str], labels: Sequence[str] | None = None,
    sample_rate: int = SAMPLE_RATE, label_rate: float = LABEL_RATE,
) -> Report:
    """Check the splits (and labels: given, or inferred from dict files in `label_dir`)."""
    report = Report()
    label_dir = Path(label_dir) if label_dir else None
    report.labels = list(labels) if labels else (infer_labels(label_dir) if label_dir else [])
    if label_dir and not report.labels:
        report.problems.append(f"{label_dir}: no dict.*.txt files, so no labels to check (give --labels)")
    dictionaries = {}
    for label in report.labels:
        dictionaries[label], problems = read_dictionary(label_dir / f"dict.{label}.txt")
        report.problems += problems
    for split in splits:
        try:
            manifest, problems = parse_manifest(Path(manifest_dir) / f"{split}.tsv")
        except ManifestError as exc:
            report.problems.append(str(exc))
            continue
        report.problems += problems + _root_problems(manifest)
        report.rows[split], report.seconds[split] = len(manifest.rows), manifest.total_samples / sample_rate
        if manifest.root.is_dir():
            report.problems += [p for row in manifest.rows for p in row_audio_problems(manifest, row, sample_rate)]
        for label in report.labels:
            path, dictionary = label_dir / f"{split}.{label}", label_dir / f"dict.{label}.txt"
            report.problems += label_problems(path, manifest, dictionary, dictionaries[label], sample_rate, label_rate)
    return report


def _root_problems(manifest: Manifest) -> list[str]:
    if manifest.root.is_dir():
        return []
    return [f"{manifest.path}:1: audio root {manifest.root} is not a directory"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest-dir", required=True, help="folder holding the {split}.tsv manifests")
    p.add_argument("--label-dir", help="label folder (omit to check only manifests and audio)")
    p.add_argument("--splits", default="train,valid", help="comma-separated splits to check")
    p.add_argument("--labels", help="comma-separated label names (default: every dict.*.txt in --label-dir)")
    p.add_argument("--sample-rate", type=int, default=SAMPLE_RATE, help="sampling rate every audio file must have (Hz)")
    p.add_argument("--label-rate", type=float, default=LABEL_RATE, help="label frames per second of audio, for the length check")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = validate(args.manifest_dir, args.label_dir, parse_list(args.splits), parse_list(args.labels) or None,
                      args.sample_rate, args.label_rate)
    for problem in report.problems:
        print(problem)
    if report.problems:
        print(f"FAILED: {len(report.problems)} problem(s)", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
