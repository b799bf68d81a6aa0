#!/usr/bin/env python
"""Extract per-layer MERT features to one .npy per audio input.

    python scripts/extract_features.py INPUT [INPUT ...] --out-dir FEATS \
        (--checkpoint CKPT.pt | --hf-model HF_FOLDER) [--layers all|0,6,12] [--reduce frame|mean] \
        [--window-seconds 30] [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--overwrite] [--skip-errors]

See mert_fairseq/evaluation/features.py; run with --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.evaluation.features import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
