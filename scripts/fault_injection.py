#!/usr/bin/env python
"""Kill the demo training with SIGKILL N times and check it resumes to a bit-identical result.

    python scripts/fault_injection.py --kills 20 --markdown runs/fault_injection/report.md

See mert_fairseq/testing/fault_injection.py and docs/reliability.md."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.testing.fault_injection import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
