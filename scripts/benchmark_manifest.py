#!/usr/bin/env python
"""Files/s of prepare_manifest on many tiny synthetic files, with 1 and 2 workers, and of a re-run.

See mert_fairseq/perf/manifest_prep.py; run with --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.perf.manifest_prep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
