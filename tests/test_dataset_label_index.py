"""The text-label offset index (`scan_text_labels`) against a plain Python reference, with chunk
boundaries falling anywhere (inside tokens, on newlines, on 64-bit word edges of the bit mask)."""
import numpy as np
import pytest

from mert_fairseq.data import labels
from mert_fairseq.data.labels import scan_text_labels


def reference(data: bytes) -> tuple[list[int], list[int]]:
    """(line start offsets + end, token counts) the slow way: split on b"\\n", count str.split() tokens."""
    lines = data.split(b"\n")
    if data.endswith(b"\n") or not data:
        lines = lines[:-1]
    offsets, pos = [0], 0
    for line in lines:
        pos += len(line) + 1
        offsets.append(pos)
    return offsets, [len(line.split()) for line in lines]


@pytest.mark.parametrize("chunk", [1, 3, 64, 65, 200, 1 << 22])
def test_scan_counts_tokens_and_offsets_like_a_python_split(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(labels, "_CHUNK", chunk)
    rng = np.random.default_rng(chunk)
    cases = [b"", b"\n", b"7", b"1 2 3\n", b"\n\n1\n", b" 12  34 \n\t56\r\n\n 7 8 9", b"1\n" * 100]
    cases += [bytes(rng.choice(list(b"0123 \n\t"), int(rng.integers(0, 400))).tolist()) for _ in range(40)]
    for data in cases:
        path = tmp_path / "x.lab"
        path.write_bytes(data)
        index = scan_text_labels(str(path))
        offsets, counts = reference(data)
        assert index["counts"].tolist() == counts, data
        assert index["offsets"].tolist() == offsets, data
        assert index["counts"].dtype == index["offsets"].dtype == np.int64


def test_text_label_windows_equal_the_split_line(tmp_path):
    """LabelStream.read(i, start, count) on text labels = the line's tokens [start, start + count) looked
    up in the dictionary; odd separators (tabs, runs of spaces, control bytes), leading zeros, and the
    errors for a code not in the dictionary and an over-long code."""
    import re

    from mert_fairseq.data.labels import DataError, LabelStream
    from mert_fairseq.models.teachers.random_projection import code_dictionary

    rng = np.random.default_rng(3)
    seps = [b" ", b"  ", b"\t", b" \x01 ", b"\x0b"]
    lines = []
    for r in range(12):
        codes = [b"%d" % c if c % 7 else b"%03d" % c for c in rng.integers(0, 30, int(rng.integers(0, 300)))]
        line = b"".join(c + seps[int(rng.integers(0, len(seps)))] for c in codes)
        lines.append(seps[r % len(seps)] + line)
    path = tmp_path / "train.km"
    path.write_bytes(b"\n".join(lines) + b"\n")
    d = code_dictionary(30)
    stream = LabelStream(str(path), d, np.arange(len(lines)), len(lines), numpy_memmap=False)
    for r, line in enumerate(lines):
        tokens = [t for t in re.split(rb"[\x00-\x20]+", line) if t]
        assert int(stream.lengths[r]) == len(tokens)
        for start, count in [(0, None), (0, 5), (3, 50), (len(tokens) // 2, 377), (len(tokens), 4), (len(tokens) + 9, 2)]:
            want = [d.index(str(int(t))) for t in tokens[start: None if count is None else start + count]]
            assert stream.read(r, start, count).tolist() == want, (r, start, count)
    path.write_bytes(b"1 2 3\n4 31 5\n6 " + b"9" * 19 + b" 7\n")
    stream = LabelStream(str(path), d, np.arange(3), 3, numpy_memmap=False)
    assert stream.read(0, 1, 2).tolist() == [d.index("2"), d.index("3")]
    with pytest.raises(DataError, match=r"train\.km:2: code '31' is not in the dictionary"):
        stream.read(1, 1, 1)
    with pytest.raises(DataError, match=r"train\.km:3: code '9999999999999999999' is not in the dictionary"):
        stream.read(2, 0, 3)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_npy_label_rows_with_bad_codes_raise_naming_the_code(tmp_path, dtype):
    """The .npy fast path (one unsigned lookup and one min) still rejects negative codes inside a row and
    codes absent from the dictionary, for every integer width."""
    from fairseq.data.dictionary import Dictionary

    from mert_fairseq.data.labels import DataError, LabelStream

    d = Dictionary()
    for c in (0, 1, 2, 5):  # code 3 and 90 are absent
        d.add_symbol(str(c))
    rows = np.array([[0, 1, 2, -1], [5, 3, -1, -1], [1, -7, 2, -1], [0, 0, 90, -1]], dtype=dtype)
    np.save(tmp_path / "t.km.npy", rows)
    stream = LabelStream(str(tmp_path / "t.km"), d, np.arange(4), 4, numpy_memmap=True)
    assert stream.read(0).tolist() == [d.index("0"), d.index("1"), d.index("2")]
    assert stream.read(1, 0, 1).tolist() == [d.index("5")] and stream.read(3, 0, 2).tolist() == [4, 4]
    for row, code in [(1, "3"), (2, "-7"), (3, "90")]:
        with pytest.raises(DataError, match=rf"t\.km\.npy:{row + 1}: code '{code}' is not in the dictionary"):
            stream.read(row)
