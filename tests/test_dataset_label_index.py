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
