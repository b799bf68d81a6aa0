#!/usr/bin/env python
"""Data-loading benchmark: audio-seconds/s per loader worker over full-length tracks (whole vs windowed
reads, WAV/FLAC/MP3, text vs .npy labels), and the cost of opening a split of --rows N rows.

See mert_fairseq/perf/data_loading.py; run with --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.perf.data_loading import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
