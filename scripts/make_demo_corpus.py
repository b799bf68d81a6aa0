#!/usr/bin/env python
"""Synthesise a seeded demo music corpus (wavs + metadata.csv).

See mert_fairseq/prep/demo_corpus.py; run with --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.prep.demo_corpus import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
