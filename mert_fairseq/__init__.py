"""mert-fairseq: MERT music-model pretraining as a fairseq user-dir plugin.

Importing the package registers the `mert_pretraining` task and the `mert` model with fairseq and
allow-lists fairseq checkpoint classes for torch >= 2.6 `torch.load`, and makes fairseq's checkpoint
writes atomic and its resume robust to a damaged `checkpoint_last.pt` (docs/reliability.md). Use it as
`common.user_dir=/path/to/mert_fairseq`.
"""
import warnings

# fairseq imports fairscale, whose torch.cuda.amp decorators warn on every import with torch >= 2.4.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"fairscale\..*")

from mert_fairseq.checkpoint_io import allow_fairseq_checkpoints  # noqa: E402
from mert_fairseq.models import mert_model  # noqa: F401,E402  (registers model "mert")
from mert_fairseq.reliability import checkpoints as _checkpoints, fault_points as _fault_points  # noqa: E402
from mert_fairseq.optim import adamw_torch  # noqa: F401,E402  (registers optimizer "adamw_torch")
from mert_fairseq.tasks import mert_pretraining  # noqa: F401,E402  (registers task "mert_pretraining")

allow_fairseq_checkpoints()
_checkpoints.install()  # atomic checkpoint files; resume past a damaged checkpoint_last.pt
_fault_points.install()  # no-op unless MERT_FAULT_POINT / MERT_FAULT_NAN_UPDATES are set (tests, harness)
