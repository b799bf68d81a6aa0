#!/usr/bin/env python
"""Fit k-means on MFCC (or MERT layer) features and write k-means label files.

See mert_fairseq/prep/kmeans_labels.py; run with --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.prep.kmeans_labels import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
