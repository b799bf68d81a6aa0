#!/usr/bin/env python
"""Join the label parts written by sharded EnCodec / K-means jobs (--shard-id/--num-shards).

See mert_fairseq/prep/merge_parts.py; run with --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.prep.merge_parts import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
