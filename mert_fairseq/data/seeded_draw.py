"""`seeded_integer(key, high)`: the first `np.random.default_rng(list(key)).integers(0, high)`, at a
third of the cost.

The dataset draws one crop start per clip from a generator seeded by (seed, epoch, index). Building
the generator (SeedSequence, PCG64, Generator: locks, ABC checks, numpy's errstate around
`generate_state`) costs 40-70 us, a tenth of a 5 s clip's whole loading cost. Here numpy's own
SeedSequence mixes the key (its public `pool`), and the rest is a few Python int operations that
follow the published algorithms: SeedSequence's output hashing (`generate_state`), PCG64 seeding and
its XSL-RR output, and Lemire's bounded integer on the low, then the high 32-bit half of that first
output, which is what `Generator.integers` does for ranges below 2^32. Other keys and ranges (a word
>= 2^32, a range >= 2^32, a third 32-bit word needed) go to numpy itself.
`tests/test_dataset_seeded_draw.py` checks equality with numpy over many keys and ranges.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

_M32, _M64, _M128 = (1 << 32) - 1, (1 << 64) - 1, (1 << 128) - 1
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED  # SeedSequence output hashing constants
_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645  # PCG64's 128-bit LCG multiplier


def _hash_constants(n: int) -> list[tuple[int, int]]:
    """(xor, multiply) constants of generate_state's n output words (they do not depend on the data)."""
    h, out = _INIT_B, []
    for _ in range(n):
        nxt = (h * _MULT_B) & _M32
        out.append((h, nxt))
        h = nxt
    return out


_HASH_B = _hash_constants(8)


def _state_words(pool: list[int]) -> list[int]:
    """SeedSequence.generate_state(4, uint64) from its mixed pool -> 4 uint64 words."""
    out = []
    for i, (x, y) in enumerate(_HASH_B):
        value = ((pool[i % len(pool)] ^ x) * y) & _M32
        out.append(value ^ (value >> 16))
    return [out[2 * i] | (out[2 * i + 1] << 32) for i in range(4)]  # little-endian uint32 pairs


def _first_output(w: list[int]) -> int:
    """The first 64-bit output of PCG64 seeded with the uint64 words w (seed w[0:2], increment w[2:4])."""
    inc = (((w[2] << 64) | w[3]) << 1 | 1) & _M128
    state = (inc + ((w[0] << 64) | w[1])) & _M128  # seeding: step from 0, add the seed, step
    state = (state * _PCG_MULT + inc) & _M128
    state = (state * _PCG_MULT + inc) & _M128  # the draw's own step
    rot = state >> 122
    x = ((state >> 64) ^ state) & _M64
    return ((x >> rot) | (x << (64 - rot))) & _M64


def seeded_integer(key: Sequence[int], high: int) -> int:
    """`int(np.random.default_rng(list(key)).integers(0, high))` for non-negative ints key and high >= 1."""
    high = int(high)
    rng = high - 1
    if not 0 <= rng < _M32:
        return int(np.random.default_rng(list(key)).integers(0, high))
    if rng == 0:
        return 0
    try:
        entropy = np.array(key, dtype=np.uint32)  # the same entropy words as the list, for words < 2^32
    except OverflowError:
        return int(np.random.default_rng(list(key)).integers(0, high))
    out = _first_output(_state_words(np.random.SeedSequence(entropy).pool.tolist()))
    excl = rng + 1
    m = (out & _M32) * excl  # next_uint32: the low half of the output first
    if (m & _M32) < excl:
        threshold = (_M32 - rng) % excl
        if (m & _M32) < threshold:
            m = (out >> 32) * excl  # then the buffered high half
            if (m & _M32) < threshold:  # a third word needs the next output: rare, let numpy do it
                return int(np.random.default_rng(list(key)).integers(0, high))
    return m >> 32
