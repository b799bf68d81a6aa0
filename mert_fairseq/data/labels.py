"""Frame-label streams for `MERTDataset`, read one window of frames at a time.

Two storage formats, one interface (`lengths`, `read(i, start, count)`):

- text `{split}.{label}`: one line of space-separated integer codes per manifest row. An offset index
  (`offsets` int64 [rows + 1], `counts` int64 [rows]) is built by one vectorised pass over the file and
  cached beside it as `{split}.{label}.index.npz` (rebuilt when the label file's size or mtime changes;
  kept in memory only when the folder is read-only). A read seeks to the row, finds token boundaries
  with numpy and converts only the tokens of the window.
- `.npy` (`task.numpy_memmap_label`, made by `scripts/labels_to_npy.py`): int array [rows, longest],
  left-aligned, padded with -1, memory-mapped; a read is a slice of one row. Row lengths are cached
  the same way (`{split}.{label}.npy.index.npz`).

Nothing per row is a Python object, so a million-row split costs a few int64 arrays per stream.
Codes map to dictionary indices through a lookup table when every dictionary symbol is an integer
(MERT's EnCodec and k-means labels); other dictionaries fall back to `Dictionary.encode_line`.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional, Sequence

import numpy as np
import torch
from fairseq.data.dictionary import Dictionary

from mert_fairseq.data.manifest_index import parse_uints
from mert_fairseq.common.atomic_files import atomic_open

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
_CHUNK = 1 << 22  # bytes per step when scanning a text label file


class DataError(ValueError):
    """Bad manifest or label data; the message names the file (and line)."""


# ----------------------------------------------------------------------------- offset index
_DECIMAL_TEXT = np.zeros(256, dtype=bool)  # bytes of a line of decimal codes: digits, whitespace
_DECIMAL_TEXT[[9, 10, 11, 12, 13, 32, *range(48, 58)]] = True
_MAX_CODE = 10**18  # codes of up to 18 digits (parse_uints's limit; longer ones go the exact way)
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (np.bitwise_count where numpy has it, numpy >= 2)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    return _POPCOUNT8[words.view(np.uint8)].reshape(*words.shape, 8).sum(axis=-1, dtype=np.uint8)


def _token_starts(tok: np.ndarray, prev_tok: bool = False) -> np.ndarray:
    """Bool mask of the first bytes of tokens, given the token-byte mask `tok` (and whether the byte
    before it was a token byte)."""
    starts = np.empty(len(tok), dtype=bool)
    if len(tok):
        starts[0] = tok[0] and not prev_tok
        np.greater(tok[1:], tok[:-1], out=starts[1:])
    return starts


def _bit_words(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bool mask packed into uint64 words (plus one spare zero word), and cumulative[k] = number of True
    entries in words[:k]."""
    bits = np.packbits(mask, bitorder="little")
    words = np.concatenate([bits, np.zeros(-len(bits) % 8 + 8, np.uint8)]).view("<u8")
    return words, np.concatenate([[0], np.cumsum(_popcount(words), dtype=np.int64)])


def _count_before(mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Number of True entries of the bool array `mask` before each position (int64 array, 0..len(mask)),
    from the mask packed to 64-bit words: no array of True positions is built."""
    words, cumulative = _bit_words(mask)
    k, r = positions >> 6, (positions & 63).astype(np.uint64)
    below = np.left_shift(np.uint64(1), r) - np.uint64(1)  # the r low bits of word k
    return cumulative[k] + _popcount(words[k] & below).astype(np.int64)


def _nth_true(mask: np.ndarray, ns: Sequence[int]) -> list[int]:
    """Index of the n-th True entry of `mask` (0-based) for each n in `ns`; len(mask) where it has fewer."""
    words, cumulative = _bit_words(mask)
    out = []
    for n in ns:
        if n >= cumulative[-1]:
            out.append(len(mask))
            continue
        k = int(np.searchsorted(cumulative, n, side="right")) - 1  # cumulative[k] <= n < cumulative[k + 1]
        bits = np.flatnonzero(np.unpackbits(words[k: k + 1].view(np.uint8), bitorder="little"))
        out.append(64 * k + int(bits[n - cumulative[k]]))
    return out


def scan_text_labels(path: str) -> dict:
    """One pass over a text label file -> {"offsets": int64 [rows + 1], "counts": int64 [rows]}.

    Line r is blob[offsets[r] : offsets[r + 1] - 1] (the newline excluded); counts[r] is its number of
    whitespace-separated tokens. A last line without a newline counts as a line (like str.splitlines).
    Per chunk, tokens are counted from a bit-packed mask of their first bytes (`_count_before`), never
    listing token positions (about a quarter of all bytes)."""
    newlines, counts = [], []  # per chunk: newline positions, tokens of the lines they end
    carry, prev_tok, base, size = 0, False, 0, os.path.getsize(path)
    with open(path, "rb") as f:
        while True:
            chunk = np.frombuffer(f.read(_CHUNK), dtype=np.uint8)
            if not len(chunk):
                break
            tok = chunk > 32  # anything but space, tab, newline, CR, ...
            starts = _token_starts(tok, prev_tok)
            nl = np.flatnonzero(chunk == 10)
            before = _count_before(starts, np.concatenate([[0], nl, [len(chunk)]]))
            per_line = np.diff(before[:-1])  # tokens of the lines ended by each newline of this chunk
            if len(nl):
                per_line[0] += carry
                carry = 0
            carry += int(before[-1] - before[-2])  # the open line after the last newline
            newlines.append(nl + base)
            counts.append(per_line)
            prev_tok, base = bool(tok[-1]), base + len(chunk)
    newlines = np.concatenate(newlines) if newlines else np.zeros(0, np.int64)
    counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], newlines + 1]).astype(np.int64)
    if size and (not len(newlines) or newlines[-1] != size - 1):  # unterminated last line
        offsets = np.append(offsets, size + 1)
        counts = np.append(counts, carry)
    return {"offsets": offsets, "counts": counts.astype(np.int64)}


def npy_row_lengths(path: str, rows_per_step: int = 4096) -> np.ndarray:
    """Codes per row (entries >= 0) of a padded .npy label matrix, read in blocks of rows with plain reads
    (not through a memory map, whose pages would count in this process's resident memory)."""
    array = np.load(path, mmap_mode="r")
    (rows, width), dtype, offset, c_order = array.shape, array.dtype, array.offset, array.flags.c_contiguous
    out = np.empty(rows, dtype=np.int64)
    if not c_order:
        for a in range(0, rows, rows_per_step):
            out[a: a + rows_per_step] = (np.asarray(array[a: a + rows_per_step]) >= 0).sum(axis=1)
        return out
    del array
    with open(path, "rb") as f:
        f.seek(offset)
        for a in range(0, rows, rows_per_step):
            n = min(rows_per_step, rows - a)
            block = np.fromfile(f, dtype=dtype, count=n * width).reshape(n, width)
            out[a: a + n] = (block >= 0).sum(axis=1)
    return out


def _fingerprint(path: str, size: int, span: int = 1 << 20) -> int:
    """A hash of the first and last MiB of a file (int64), so that a same-size rewrite within one mtime
    tick is still noticed."""
    with open(path, "rb") as f:
        head = f.read(span)
        f.seek(max(size - span, 0))
        tail = f.read(span)
    return int.from_bytes(hashlib.blake2b(head + tail, digest_size=7).digest(), "little")


def cached_index(path: str, build) -> dict:
    """`build(path)` -> dict of arrays, cached in `{path}.index.npz`, keyed by the file's size, mtime and
    a hash of its first and last MiB."""
    stat = os.stat(path)
    key = np.array([INDEX_VERSION, stat.st_size, stat.st_mtime_ns, _fingerprint(path, stat.st_size)], dtype=np.int64)
    cache = f"{path}.index.npz"
    if os.path.isfile(cache):
        try:
            with np.load(cache) as z:
                if np.array_equal(z["key"], key):
                    return {k: z[k] for k in z.files if k != "key"}
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("%s: unreadable label index, rebuilding (%s)", cache, exc)
    index = build(path)
    try:
        with atomic_open(cache, "wb") as f:
            np.savez(f, key=key, **index)
    except OSError as exc:
        logger.warning("%s: cannot write the label index (%s); keeping it in memory only", cache, exc)
    return index


# ----------------------------------------------------------------------------- streams
def code_lookup(dictionary: Dictionary) -> Optional[np.ndarray]:
    """int64 table code -> dictionary index (unk for codes absent), or None if a symbol is not an int."""
    symbols = dictionary.symbols[dictionary.nspecial:]
    if not symbols or not all(s.isascii() and s.isdigit() for s in symbols):
        return None
    codes = np.array([int(s) for s in symbols], dtype=np.int64)
    lut = np.full(int(codes.max()) + 2, dictionary.unk(), dtype=np.int64)  # the last entry catches overflow
    lut[codes] = np.arange(dictionary.nspecial, dictionary.nspecial + len(codes))
    return lut


class LabelStream:
    """One label stream for the kept manifest rows `rows` (int64 array, ascending file rows)."""

    def __init__(self, path: str, dictionary: Dictionary, rows: np.ndarray, num_rows: int,
                 numpy_memmap: bool) -> None:
        self.dictionary, self.rows = dictionary, np.asarray(rows, dtype=np.int64)
        self.path = (path if path.endswith(".npy") else f"{path}.npy") if numpy_memmap else path
        if not os.path.isfile(self.path):
            raise DataError(f"{self.path}: label file not found")
        self.lut, self.unk = code_lookup(dictionary), dictionary.unk()
        self.array, self.offsets = None, None
        if numpy_memmap:
            self.array = np.load(self.path, mmap_mode="r").view(np.ndarray)  # plain view: cheap slicing
            if not np.issubdtype(self.array.dtype, np.integer):
                raise DataError(f"{self.path}: label codes must be integers (padded with -1), "
                                f"found dtype {self.array.dtype}")
            self._check_rows(self.array.shape[0], num_rows)
            if self.lut is None:
                raise DataError(f"{self.path}: .npy labels need a dictionary of integer codes")
            size = self.array.dtype.itemsize  # 64-bit indices wrap back to negative ones: checked apart
            self.unsigned = np.dtype(f"u{size}") if size < 8 else None
            self.first_id = dictionary.nspecial  # code ids are nspecial.., unk (a special) is below
            assert self.unk < self.first_id, "fairseq dictionaries add unk among the first nspecial symbols"
            counts = cached_index(self.path, lambda p: {"counts": npy_row_lengths(p)})["counts"]
        else:
            index = cached_index(self.path, scan_text_labels)
            self._check_rows(len(index["counts"]), num_rows)
            self.offsets, counts = index["offsets"], index["counts"]  # offsets of every file row, [num_rows + 1]
        self.lengths = counts[self.rows].astype(np.int32)

    def _check_rows(self, found: int, expected: int) -> None:
        if found != expected:
            raise DataError(f"{self.path}: {found} label lines but the manifest has {expected} rows "
                            "(one line per manifest row, same order)")

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        return f"{self.path}:{int(self.rows[i]) + 1}"

    def read(self, i: int, start: int = 0, count: Optional[int] = None) -> torch.Tensor:
        """Dictionary indices (int64) of frames [start, start + count) of kept item i (fewer at the end)."""
        length = int(self.lengths[i])
        stop = length if count is None else min(length, start + count)
        start = min(start, stop)
        if self.array is not None:  # rows are left-aligned codes >= 0, padded with -1 after `length`
            codes = self.array[self.rows[i], start:stop]
            try:  # unsigned view (up to 32 bits): a negative code indexes past the table (IndexError)
                ids = self.lut[codes.view(self.unsigned) if self.unsigned else codes]
            except IndexError:
                ids = None
            # codes absent from the dictionary map to unk, the only id below nspecial in the table
            if ids is None or (ids.size and (ids.min() < self.first_id or (not self.unsigned and codes.min() < 0))):
                return self._lookup(codes.astype(np.int64), i)  # raises, naming the bad code
            return torch.from_numpy(ids)
        row = self.rows[i]
        begin, end = int(self.offsets[row]), int(self.offsets[row + 1]) - 1  # without the newline
        fd = os.open(self.path, os.O_RDONLY)
        try:
            line = np.frombuffer(os.pread(fd, end - begin, begin), dtype=np.uint8)
        finally:
            os.close(fd)
        tok = line > 32
        # bytes [a, b): from the first byte of token `start` to that of token `stop` (or the line's end)
        a, b = _nth_true(_token_starts(tok), (start, stop)) if stop > start else (0, 0)
        if self.lut is not None and b > a and _DECIMAL_TEXT[line[a:b]].all():  # digits and whitespace only
            codes = np.fromstring(line[a:b].tobytes(), dtype=np.int64, sep=" ")  # C parser, no list of words
            if len(codes) == stop - start and codes.max() < _MAX_CODE:
                return self._lookup(codes, i)
        edges = np.flatnonzero(np.diff(np.concatenate([[False], tok[a:b], [False]]).astype(np.int8))) + a
        first, last = edges[0::2], edges[1::2]  # byte ranges of tokens start .. stop - 1
        if self.lut is not None:
            codes = parse_uints(line, first, last)
            if codes is not None:
                return self._lookup(codes, i)
        words = [line[a:b].tobytes().decode() for a, b in zip(first, last)]
        return self._encode(" ".join(words), i)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.read(i)

    def _lookup(self, codes: np.ndarray, i: int) -> torch.Tensor:
        """int64 codes -> dictionary indices; negative or too large codes clip to the table's unk entry."""
        ids = self.lut[np.minimum(codes.view(np.uint64), np.uint64(len(self.lut) - 1)).view(np.int64)]
        if (ids == self.dictionary.unk()).any():
            raise DataError(f"{self.where(i)}: code {str(codes[ids == self.dictionary.unk()][0])!r} "
                            "is not in the dictionary")
        return torch.from_numpy(ids)

    def _encode(self, line: str, i: int) -> torch.Tensor:
        ids = self.dictionary.encode_line(line, append_eos=False, add_if_not_exist=False).long()
        if (ids == self.dictionary.unk()).any():
            bad = next(tok for tok in line.split() if self.dictionary.index(tok) == self.dictionary.unk())
            raise DataError(f"{self.where(i)}: code {bad!r} is not in the dictionary")
        return ids
