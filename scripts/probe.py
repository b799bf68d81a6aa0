#!/usr/bin/env python
"""Probe frozen MERT features (MARBLE-style): per layer, mean-pooled, logistic / ridge probes per task.

    python scripts/probe.py CKPT.pt mfcc random-init:CKPT.pt --labels metadata.csv --tasks key,mode,tempo_bpm

See mert_fairseq/evaluation/probe_report.py; run with --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.evaluation.probe_report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
