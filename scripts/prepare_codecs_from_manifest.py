#!/usr/bin/env python
"""Write EnCodec 24 kHz code labels (encodec_0..7) and their dictionaries for a manifest.

See mert_fairseq/prep/encodec_labels.py; run with --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.prep.encodec_labels import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
