#!/usr/bin/env python
"""Convert an audio folder to 24 kHz mono wavs and write fairseq train/valid manifests.

See mert_fairseq/prep/manifest.py; run with --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.prep.manifest import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
