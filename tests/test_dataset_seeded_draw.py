"""`seeded_integer` (the dataset's crop-start draw) equals numpy's `default_rng(key).integers(0, high)`:
exact resume and the windowed-read batches depend on every draw being the same number."""
import numpy as np

from mert_fairseq.data.seeded_draw import seeded_integer


def test_seeded_integer_equals_numpy_default_rng():
    rng = np.random.default_rng(7)
    highs = [1, 2, 3, 7, 1000, 5_760_001, 2**31 + 1, 3 * 2**30, 2**32 - 1, 2**32, 2**33 + 3]  # >= 2^32: numpy
    checked = 0
    for t in range(3000):
        n_words = 1 + t % 5  # (seed, epoch, index[, stream]) and shorter/longer keys
        key = [int(k) for k in rng.integers(0, 10**6, n_words)]
        if t % 4 == 0:
            key[0] = int(rng.integers(0, 2**32))  # large 32-bit seeds
        if t % 97 == 0:
            key[0] = 2**32 + t  # a seed of two words: numpy's path
        high = highs[t % len(highs)] if t % 2 else int(rng.integers(1, 2**32))
        assert seeded_integer(key, high) == int(np.random.default_rng(key).integers(0, high)), (key, high)
        checked += 1
    # numpy ints as given by index arrays, and the rejection branch of Lemire's method (ranges near 2^32)
    for index in np.arange(200, dtype=np.int64):
        for high in (np.int64(2**31 + 12345), 4_000_000_000):
            assert seeded_integer((1, 2, index), high) == int(np.random.default_rng([1, 2, index]).integers(0, high))
    assert checked == 3000
