#!/usr/bin/env python
"""Plot a pretraining run (loss, masked accuracy per codebook, CQT loss, lr, audio-s/s, probes) to one PNG.

    python scripts/plot_training.py runs/demo/train.log --out training.png
    python scripts/plot_training.py TENSORBOARD_DIR

See mert_fairseq/evaluation/plot_training.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.evaluation.plot_training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
