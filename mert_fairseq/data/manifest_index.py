"""A fairseq manifest held as a few numpy arrays, for splits of millions of rows.

`read_manifest_index(path)` parses `{split}.tsv` (line 1 the audio root, then `relpath<TAB>num_samples`)
with vectorised numpy on the file's bytes: no Python object per row. The index keeps

    blob    uint8 [file bytes]   the manifest file itself; row i's name is blob[starts[i]:ends[i]]
    starts  int64 [rows]
    ends    int64 [rows]
    sizes   int64 [rows]         num_samples

so one million rows cost about (file size + 24 bytes/row) of memory, shared copy-on-write by forked
data-loader workers. Anything the fast path does not accept (empty lines, a missing tab, a non-digit
size, CR line ends, ...) is handed to `mert_fairseq.prep.manifest.read_manifest`, whose errors name
the file and line; a manifest that it accepts after all is converted from its rows.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mert_fairseq.data.manifest import ManifestError, read_manifest

NEWLINE, TAB, ZERO = 10, 9, 48
_MAX_DIGITS = 18  # int64 holds every 18-digit number


@dataclass
class ManifestIndex:
    path: str
    root: str
    blob: np.ndarray    # uint8 [bytes]
    starts: np.ndarray  # int64 [rows], name start in blob
    ends: np.ndarray    # int64 [rows], name end in blob
    sizes: np.ndarray   # int64 [rows], samples

    def __len__(self) -> int:
        return len(self.sizes)

    def name(self, row: int) -> str:
        return self.blob[self.starts[row]: self.ends[row]].tobytes().decode()

    def line(self, row: int) -> int:
        """1-based line number of a row in the manifest file (line 1 is the root)."""
        return row + 2

    def select(self, rows: np.ndarray) -> "ManifestIndex":
        """The rows `rows` (int64 array) only; the blob is shared."""
        return ManifestIndex(self.path, self.root, self.blob, self.starts[rows], self.ends[rows], self.sizes[rows])


def parse_uints(blob: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
    """Decimal unsigned integers in blob[starts[i]:ends[i]] -> int64 array, or None if any field is
    empty, longer than 18 digits or has a non-digit byte. Vectorised over fields, one pass per digit."""
    widths = ends - starts
    if len(widths) and (widths.min() < 1 or widths.max() > _MAX_DIGITS):
        return None
    values = np.zeros(len(starts), dtype=np.int64)
    for k in range(int(widths.max()) if len(widths) else 0):
        live = widths > k
        digits = blob[np.where(live, starts + k, 0)].astype(np.int64) - ZERO
        if ((digits < 0) | (digits > 9))[live].any():
            return None
        values = np.where(live, values * 10 + digits, values)
    return values


def read_manifest_index(path: str | os.PathLike) -> ManifestIndex:
    """Parse a manifest into a `ManifestIndex`; malformed or empty manifests raise `ManifestError`."""
    path = str(path)
    try:
        blob = np.fromfile(path, dtype=np.uint8)
    except OSError:
        blob = None
    index = _fast_index(path, blob) if blob is not None else None
    return index if index is not None else _slow_index(path)


def _fast_index(path: str, blob: np.ndarray) -> ManifestIndex | None:
    if not len(blob) or ((blob < 32) & (blob != TAB) & (blob != NEWLINE)).any():
        return None  # empty, or control bytes such as \r (str.splitlines line breaks): let the slow path judge
    newlines = np.flatnonzero(blob == NEWLINE)
    line_ends = newlines if blob[-1] == NEWLINE else np.append(newlines, len(blob))
    if len(line_ends) < 2:
        return None
    root = blob[: line_ends[0]].tobytes().decode(errors="replace").strip()
    starts, ends = line_ends[:-1] + 1, line_ends[1:]  # data lines
    tabs = np.flatnonzero(blob == TAB)
    tabs = tabs[tabs > line_ends[0]]
    line_of_tab = np.searchsorted(starts, tabs, side="right") - 1
    if not root or len(tabs) != len(starts) or not np.array_equal(line_of_tab, np.arange(len(starts))):
        return None  # a line without exactly one tab, or an empty line
    sizes = parse_uints(blob, tabs + 1, ends)
    if sizes is None or (sizes <= 0).any() or (tabs == starts).any():
        return None
    return ManifestIndex(path, root, blob, starts.astype(np.int64), tabs.astype(np.int64), sizes)


def _slow_index(path: str) -> ManifestIndex:
    """The line-by-line reader: raises its file:line errors, or converts the rows it accepts."""
    manifest = read_manifest(path)
    names = [row.relpath.encode() for row in manifest.rows]
    lengths = np.array([len(n) for n in names], dtype=np.int64)
    ends = np.cumsum(lengths)
    blob = np.frombuffer(b"".join(names), dtype=np.uint8) if names else np.zeros(0, np.uint8)
    lines = [row.line for row in manifest.rows]
    if lines != list(range(2, len(lines) + 2)):
        raise ManifestError(f"{path}: rows must be on consecutive lines after the root")
    sizes = np.array([row.num_samples for row in manifest.rows], dtype=np.int64)
    return ManifestIndex(path, str(manifest.root), blob, ends - lengths, ends, sizes)
