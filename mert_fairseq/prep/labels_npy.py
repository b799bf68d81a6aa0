"""Text frame labels -> a binary .npy matrix that `MERTDataset` memory-maps (`task.numpy_memmap_label`).

Input `{split}.{label}`: one line per manifest row, space-separated non-negative integer codes.
Output `{split}.{label}.npy`: int16 (codes < 32768) or int32, shape [rows, longest row], each row
left-aligned and padded with -1. Reading a batch then costs a memmap slice instead of parsing text
and looking every token up in a Dictionary.

Two passes over the text (count, then fill a memory-mapped output), so memory stays at one row;
the output is written to a temporary file next to the target and renamed into place (atomic).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]


def _scan(path: Path):
    rows, longest, largest = 0, 0, -1
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            codes = line.split()
            rows += 1
            longest = max(longest, len(codes))
            if codes:
                values = np.array(codes, dtype=np.int64)
                if values.min() < 0:
                    raise ValueError(f"{path}:{lineno}: negative code {values.min()} (-1 is the padding value)")
                largest = max(largest, int(values.max()))
    return rows, longest, largest


def labels_to_npy(src: PathLike, dst: Optional[PathLike] = None, dtype: str = "auto") -> Path:
    """Convert one text label file; returns the .npy path (default `{src}.npy`).

    dtype: "auto" (int16 when every code fits, else int32), "int16" or "int32".
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_name(src.name + ".npy")
    if not src.is_file():
        raise FileNotFoundError(f"{src}: label file not found")
    rows, longest, largest = _scan(src)
    if dtype == "auto":
        dtype = "int16" if largest <= np.iinfo(np.int16).max else "int32"
    if dtype not in ("int16", "int32"):
        raise ValueError(f"dtype {dtype!r}: choose auto, int16 or int32")
    if largest > np.iinfo(dtype).max:
        raise ValueError(f"{src}: code {largest} does not fit {dtype}")
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(rows, longest))
        out[:] = -1
        with open(src, "rb") as f:
            for i, line in enumerate(f):
                codes = line.split()
                if codes:
                    out[i, : len(codes)] = np.array(codes, dtype=np.int64)
        out.flush()
        del out
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def build_parser():
    import argparse

    p = argparse.ArgumentParser(description="Convert text frame labels ({split}.{label}) to {split}.{label}.npy "
                                            "for task.numpy_memmap_label=true.")
    p.add_argument("labels", nargs="+", help="text label files, e.g. LABELS/train.encodec_0 LABELS/train.encodec_1")
    p.add_argument("--dtype", default="auto", choices=["auto", "int16", "int32"],
                   help="auto: int16 when every code fits, else int32")
    p.add_argument("--out", help="output path (only with a single input; default: INPUT.npy)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.out and len(args.labels) != 1:
        p.error("--out needs exactly one input file")
    for src in args.labels:
        dst = labels_to_npy(src, args.out, args.dtype)
        arr = np.load(dst, mmap_mode="r")
        print(f"{src} -> {dst} ({arr.shape[0]} rows x {arr.shape[1]} frames, {arr.dtype})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
