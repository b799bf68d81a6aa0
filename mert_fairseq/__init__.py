"""mert-fairseq: MERT music-model pretraining as a fairseq user-dir plugin.

Importing the package registers the `mert_pretraining` task and the `mert` model with fairseq and
allow-lists fairseq checkpoint classes for torch >= 2.6 `torch.load`. Use it as
`common.user_dir=/path/to/mert_fairseq`.
"""
from mert_fairseq.checkpoint import allow_fairseq_checkpoints
from mert_fairseq.models import mert_model  # noqa: F401  (registers model "mert")
from mert_fairseq.tasks import mert_pretraining  # noqa: F401  (registers task "mert_pretraining")

allow_fairseq_checkpoints()
