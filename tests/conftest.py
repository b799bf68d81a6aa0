import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tone_data(tmp_path_factory) -> dict:
    """16 train + 4 valid clips of 2 s tones with frame labels (8 classes)."""
    from synthetic import make_tone_dataset

    return make_tone_dataset(tmp_path_factory.mktemp("tones"))
