#!/usr/bin/env python
"""Training-throughput benchmark (ours vs the original's formulation, same run).

See mert_fairseq/perf/step_benchmark.py; run with --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.perf.step_benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
