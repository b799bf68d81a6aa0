"""mert-fairseq: MERT music-model pretraining as a fairseq user-dir plugin.

`common.user_dir=/path/to/mert_fairseq` imports this package, which registers with fairseq, and loads
nothing but the training runtime:

- task `mert_pretraining` (`tasks/`), which reads manifests and label streams (`data/`);
- model `mert` (`models/`: CNN front end, transformer encoder, masked prediction, with its teachers in
  `models/teachers/`);
- criterion `mert` (`criterions/`: fairseq's hubert loss as one batched, sync-free computation);
- optimizer `adamw_torch` (`optim/`).

Importing changes nothing else in the process. The few patches of fairseq (atomic checkpoint files, resume
past a damaged `checkpoint_last.pt`, `weights_only` loading) are listed in `tasks/fairseq_patches.py` and
installed when the task is set up. Tools around training (data preparation `prep/`, Hugging Face `export/`,
`evaluation/`, benchmarks `perf/`, fault injection `testing/`) are imported only by the scripts that use them.
"""
from mert_fairseq.criterions import mert_criterion  # noqa: F401  (registers criterion "mert")
from mert_fairseq.models import mert_model  # noqa: F401  (registers model "mert")
from mert_fairseq.optim import adamw_torch  # noqa: F401  (registers optimizer "adamw_torch")
from mert_fairseq.tasks import mert_pretraining  # noqa: F401  (registers task "mert_pretraining")
