#!/usr/bin/env python
"""Convert text frame labels to .npy matrices (int16/int32, rows padded with -1) for task.numpy_memmap_label.

See mert_fairseq/prep/labels_npy.py; run with --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.prep.labels_npy import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
