"""fairseq manifests (``{split}.tsv``): line 1 is the audio root directory, then one
``relpath<TAB>num_samples`` row per clip. Reading them with errors that name the file and line, and
header-only checks of the audio a manifest points to.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file (and line)."""


@dataclass(frozen=True)
class ManifestRow:
    relpath: str
    num_samples: int
    line: int = 0  # 1-based line number in the tsv (0 when not read from a file)


@dataclass(frozen=True)
class Manifest:
    path: Path
    root: Path
    rows: list[ManifestRow]

    def audio_path(self, row: ManifestRow) -> Path:
        return self.root / row.relpath

    def where(self, row: ManifestRow) -> str:
        """'file:line' of a row, for error messages."""
        return f"{self.path}:{row.line}"

    @property
    def total_samples(self) -> int:
        return sum(row.num_samples for row in self.rows)


def parse_manifest(path: str | os.PathLike) -> tuple[Manifest, list[str]]:
    """Read a manifest leniently -> (manifest of the well-formed rows, ``file:line: problem`` list)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc.strerror or exc})") from exc
    if not lines or not lines[0].strip():
        raise ManifestError(f"{path}:1: manifest must start with the audio root directory")
    rows, problems = [], []
    for number, line in enumerate(lines[1:], start=2):
        row, problem = _parse_row(line, number)
        if problem:
            problems.append(f"{path}:{number}: {problem}")
        elif row:
            rows.append(row)
    return Manifest(path, Path(lines[0].strip()), rows), problems


def _parse_row(line: str, number: int) -> tuple[ManifestRow | None, str | None]:
    if not line.strip():
        return None, "empty line"
    fields = line.split("\t")
    if len(fields) != 2:
        return None, f"expected 'relpath<TAB>num_samples', got {len(fields)} field(s)"
    try:
        num_samples = int(fields[1])
    except ValueError:
        return None, f"sample count {fields[1]!r} is not an integer"
    if num_samples <= 0:
        return None, f"sample count {num_samples} is not positive"
    return ManifestRow(fields[0], num_samples, number), None


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest; raise ManifestError listing every malformed line, or if it has no rows."""
    manifest, problems = parse_manifest(path)
    if problems:
        raise ManifestError("malformed manifest:\n" + "\n".join(problems))
    if not manifest.rows:
        raise ManifestError(f"{manifest.path}: manifest has no audio rows")
    return manifest


def audio_problems(manifest: Manifest, row: ManifestRow, sample_rate: int) -> list[str]:
    """Header-only checks of one row's audio: exists, readable, rate, mono, length = tsv."""
    where, path = manifest.where(row), manifest.audio_path(row)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # missing file or unreadable header
        reason = "file not found" if not path.exists() else f"cannot read audio ({exc})"
        return [f"{where}: {path}: {reason}"]
    problems = []
    if info.samplerate != sample_rate:
        problems.append(f"{where}: {path}: sample rate {info.samplerate}, expected {sample_rate}")
    if info.channels != 1:
        problems.append(f"{where}: {path}: {info.channels} channels, expected mono")
    if info.frames != row.num_samples:
        problems.append(f"{where}: {path}: has {info.frames} samples, manifest says {row.num_samples}")
    return problems


def check_audio(manifest: Manifest, sample_rate: int) -> None:
    """Raise ManifestError listing every row whose audio does not match the manifest."""
    problems = [p for row in manifest.rows for p in audio_problems(manifest, row, sample_rate)]
    if problems:
        raise ManifestError("audio does not match the manifest:\n" + "\n".join(problems))
