"""Small pieces shared by the data-preparation modules: frame rule, label and dictionary files."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mert_fairseq.fileio import atomic_open

SAMPLE_RATE = 24_000
LABEL_HOP = 320  # samples per label frame at 24 kHz -> 75 Hz
LABEL_RATE = SAMPLE_RATE // LABEL_HOP


def num_label_frames(num_samples: int, hop: int = LABEL_HOP) -> int:
    """The project's frame rule: ``ceil(num_samples / hop)`` label frames per file."""
    return -(-int(num_samples) // hop)


def parse_list(text: str | Sequence[str] | None) -> list[str]:
    """'a,b, c' (or a list of such strings) -> ['a', 'b', 'c']."""
    if text is None:
        return []
    parts = [text] if isinstance(text, str) else list(text)
    return [item.strip() for part in parts for item in part.split(",") if item.strip()]


def split_name(manifest_file: str | os.PathLike) -> str:
    """'train.tsv' -> 'train'."""
    name = Path(manifest_file).name
    return name[: -len(".tsv")] if name.endswith(".tsv") else name


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,  # fairseq (imported by the package) may have configured logging already
    )


def write_dictionary(path: str | os.PathLike, counts: np.ndarray) -> None:
    """fairseq Dictionary file: one ``<code> <count>`` line for every code 0..len(counts)-1."""
    with atomic_open(path, "w") as f:
        for code, count in enumerate(np.asarray(counts, dtype=np.int64)):
            f.write(f"{code} {count}\n")


def format_label_line(codes: Iterable[int]) -> str:
    return " ".join(map(str, codes)) + "\n"
