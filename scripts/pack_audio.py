#!/usr/bin/env python
"""Pack a manifest's audio files into large uncompressed ZIP shards (shard.zip:offset:length rows).

    python scripts/pack_audio.py DATA/train.tsv --out-dir PACKED [--max-shard-bytes 2e9]
    python scripts/pack_audio.py DATA/train.tsv --out-dir PACKED --pcm --workers 4  # FLAC/MP3: store decoded WAV

See mert_fairseq/prep/pack.py; run with --help for the options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mert_fairseq.prep.pack import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
