"""Every change mert-fairseq makes to fairseq, in one place.

`install()` is called by `MERTPretrainingTask.setup_task`, i.e. once fairseq has built the task, before
it loads or saves a checkpoint. Importing the plugin changes nothing. Each patch replaces one attribute
of `fairseq.checkpoint_utils` or (when a training run has imported it) `fairseq_cli.train`
(fairseq-fixed 0.12.3.1) and affects that module's callers only:

| attribute of checkpoint_utils | replaced by | why | fairseq internals it relies on |
|---|---|---|---|
| `torch_persistent_save` | `_persistent_save` | fairseq writes checkpoints in place: a kill or a full disk leaves a torn file | `save_checkpoint` calls the module-level name `torch_persistent_save(obj, filename, async_write)` |
| `PathManager` | `_CheckpointPathManager` (fairseq's PathManager with an atomic local `copy`) | `save_checkpoint` copies the first file to `checkpoint_last.pt`, ... with a plain copy that a kill tears | `save_checkpoint` calls `PathManager.copy(src, dst, overwrite=True)` through the module-level name |
| `load_checkpoint` | `_load_checkpoint` | resume past a damaged `checkpoint_last.pt`; stop at once when already at `max_update`; catch SIGUSR1/SIGTERM from here on (`checkpoint.preemption`) | `fairseq_cli.train.main` calls `checkpoint_utils.load_checkpoint(cfg.checkpoint, trainer, ...)` through the module |
| `save_checkpoint` | `_save_checkpoint` | preemption: once the checkpoint of a run stopped by SIGUSR1/SIGTERM is saved, exit with code 75 (and requeue a Slurm job): `checkpoint.preemption` | `fairseq_cli.train.validate_and_save` calls `checkpoint_utils.save_checkpoint(cfg.checkpoint, trainer, epoch_itr, val_loss)` through the module, on every rank |
| `load_checkpoint_to_cpu` | `_load_checkpoint_to_cpu` | read with `weights_only=True` and the allow-list whatever the environment says; errors name the file; a checkpoint written with the `hubert` criterion is read as written with `mert` (`HubertCriterion` -> `MertCriterion`: the task builds `MertCriterion` for both names, same loss, no state), so older checkpoints resume | the trainer's `load_checkpoint` and fairseq's model loading call `checkpoint_utils.load_checkpoint_to_cpu` through the module; the state is finished by fairseq's `_upgrade_state_dict`; the trainer compares `optimizer_history[-1]["criterion_name"]` with its criterion's class name |
| `fairseq_cli.train.should_stop_early` | `_should_stop_early` | preemption: stop (and so save) after the update during which a signal came (under data parallelism after the next one, on every rank at once, agreed without a per-update sync) | `validate_and_save` calls the module-level name `should_stop_early(cfg, valid_loss)` after every update, then saves when it is true; fairseq keeps its patience state as attributes of that name |

and one attribute of `fairseq.models.distributed_fairseq_model`:

| attribute | replaced by | why | fairseq internals it relies on |
|---|---|---|---|
| `DistributedDataParallel` | `_DistributedDataParallel` (torch's, without `device_ids`/`output_device` for a CPU module) | `ddp_backend=c10d` (the recipes') passes `device_ids=[device_id]`, which torch refuses for CPU modules: c10d could not run on CPU/gloo | `DistributedFairseqModel` calls the module-level name `DistributedDataParallel(module=..., device_ids=..., ...)` |

Every replaced attribute, these and the fault-injection hooks (`mert_fairseq.testing.fault_points`,
installed on top of these by the fault-injection entry point `mert_fairseq.testing.fault_train` only), goes
through `replace()`, which records the attribute's own value; `uninstall()` puts every one back.
Checkpoint files are written through `checkpoint_file_hook` (the file itself; the fault-injection entry point
replaces it with its half-way writer). `tests/test_layout.py` fails when one of the internals above changes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import IO, Any, Callable, List

import torch
from fairseq import checkpoint_utils
from fairseq.models import distributed_fairseq_model
from fairseq.file_io import PathManager
from omegaconf import OmegaConf

from mert_fairseq.checkpoint import preemption, resume
from mert_fairseq.checkpoint.safe_load import load_checkpoint_state

logger = logging.getLogger(__name__)

CRITERION_RENAMES = {"HubertCriterion": "MertCriterion"}  # criterion class a checkpoint names -> read as


@dataclasses.dataclass(frozen=True)
class Patch:
    """`owner.name` replaced; `replaced` is the value it had, `own` whether `owner` held it itself (else it
    was inherited from a base class)."""

    owner: Any  # a module or a class
    name: str
    replaced: Any
    own: bool


_patches: List[Patch] = []  # in the order applied; undone in reverse


def replace(owner: Any, name: str, replacement: Any) -> Any:
    """Set `owner.name = replacement`, recorded for `uninstall()`; returns the value it replaces."""
    replaced = getattr(owner, name)
    _patches.append(Patch(owner, name, vars(owner).get(name, replaced), name in vars(owner)))
    setattr(owner, name, replacement)
    return replaced


def original(owner: Any, name: str) -> Any:
    """`owner.name` as it was before its first patch (fairseq's own), patched or not."""
    first = next((p for p in _patches if p.owner is owner and p.name == name), None)
    return getattr(owner, name) if first is None else first.replaced


def installed() -> List[Patch]:
    """The patches in place, oldest first (empty when none is)."""
    return list(_patches)


def checkpoint_file_hook(f: IO[bytes], point: str) -> IO[bytes]:
    """What an atomic save writes its temporary file through (`point`: "checkpoint_write" or
    "checkpoint_copy"): the file itself. The fault-injection entry point replaces this attribute."""
    return f


def _hook(point: str) -> Callable[[IO[bytes]], IO[bytes]]:
    return lambda f: checkpoint_file_hook(f, point)  # looked up at write time


def _persistent_save(obj, filename, async_write: bool = False):
    if async_write or not isinstance(filename, str) or not resume.is_local(filename):
        return original(checkpoint_utils, "torch_persistent_save")(obj, filename, async_write)
    resume.atomic_torch_save(obj, filename, _hook("checkpoint_write"))


class _CheckpointPathManager:
    """fairseq's PathManager for `checkpoint_utils` alone, with `copy` made atomic for local files."""

    def __getattr__(self, name):
        return getattr(PathManager, name)

    @staticmethod
    def copy(src_path: str, dst_path: str, overwrite: bool = False, **kwargs) -> bool:
        if not (resume.is_local(src_path) and resume.is_local(dst_path)) or kwargs:
            return PathManager.copy(src_path, dst_path, overwrite, **kwargs)
        if os.path.exists(dst_path) and not overwrite:
            return False
        resume.atomic_copy(src_path, dst_path, _hook("checkpoint_copy"))
        return True


def _load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks: bool = False):
    """fairseq's `load_checkpoint_to_cpu` for local files, read by `load_checkpoint_state` (weights_only,
    allow-list; a damaged or hostile file is an error naming it), then finished as fairseq does; the
    criterion a checkpoint names is renamed by CRITERION_RENAMES (the trainer compares it with its own)."""
    if not resume.is_local(path):
        return original(checkpoint_utils, "load_checkpoint_to_cpu")(path, arg_overrides, load_on_all_ranks)
    state = load_checkpoint_state(path)
    if state.get("args") is not None and arg_overrides is not None:
        for name, value in arg_overrides.items():
            setattr(state["args"], name, value)
    if state.get("cfg") is not None:  # as fairseq does with omegaconf >= 2.2 (pinned 2.3)
        state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
        if arg_overrides is not None:
            checkpoint_utils.overwrite_args_by_name(state["cfg"], arg_overrides)
    state = checkpoint_utils._upgrade_state_dict(state)
    history = state.get("optimizer_history") or []
    if history and history[-1].get("criterion_name") in CRITERION_RENAMES:
        history[-1]["criterion_name"] = CRITERION_RENAMES[history[-1]["criterion_name"]]
    return state


def _load_checkpoint(cfg, trainer, **passthrough_args):
    """fairseq's `load_checkpoint`, after checking the checkpoint it will resume from."""
    if trainer.is_data_parallel_master and os.path.isdir(cfg.save_dir):
        resume.remove_stale_temp_files(cfg.save_dir)
    path = resume.restore_path(cfg)
    if path and resume.is_local(path) and os.path.exists(path):
        fall_back = getattr(getattr(trainer.task, "cfg", None), "resume_from_intact_checkpoint", True)
        chosen = resume.resume_checkpoint(path, cfg.save_dir, fall_back,
                                          explicit=cfg.restore_file != "checkpoint_last.pt")
        if chosen != path:
            cfg = resume.with_restore_file(cfg, chosen)
    preemption.install_handlers()  # a training process: from here on a signal ends with a saved checkpoint
    extra_state, epoch_itr = original(checkpoint_utils, "load_checkpoint")(cfg, trainer, **passthrough_args)
    resume.stop_if_already_complete(trainer.get_num_updates(), trainer.cfg.optimization.max_update, path)
    return extra_state, epoch_itr


def _save_checkpoint(cfg, trainer, epoch_itr, val_loss):
    """fairseq's `save_checkpoint`; then, for a preempted run, exit (preemption.after_save)."""
    saved = original(checkpoint_utils, "save_checkpoint")(cfg, trainer, epoch_itr, val_loss)
    preemption.after_save(trainer)
    return saved


def _should_stop_early(cfg, valid_loss) -> bool:
    """fairseq's patience check (it keeps its state as attributes of the name it is called by, i.e. of this
    function), or a preemption signal agreed by all ranks."""
    early = original(sys.modules["fairseq_cli.train"], "should_stop_early")(cfg, valid_loss)
    return preemption.stop_requested() or early


class _DistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """torch's DDP; for a module on the CPU without the device_ids / output_device fairseq passes."""

    def __init__(self, module, device_ids=None, output_device=None, **kwargs):
        if all(p.device.type == "cpu" for p in module.parameters()):
            device_ids = output_device = None
        super().__init__(module, device_ids=device_ids, output_device=output_device, **kwargs)


DDP_REPLACEMENTS = {"DistributedDataParallel": _DistributedDataParallel}

REPLACEMENTS = {
    "torch_persistent_save": _persistent_save,
    "PathManager": _CheckpointPathManager(),
    "load_checkpoint": _load_checkpoint,
    "load_checkpoint_to_cpu": _load_checkpoint_to_cpu,
    "save_checkpoint": _save_checkpoint,
}
TRAIN_REPLACEMENTS = {"should_stop_early": _should_stop_early}  # attributes of fairseq_cli.train


def install() -> None:
    """Apply the patches above (idempotent: nothing happens while any patch is installed)."""
    if _patches:
        return
    for name, replacement in REPLACEMENTS.items():
        replace(checkpoint_utils, name, replacement)
    for name, replacement in DDP_REPLACEMENTS.items():
        replace(distributed_fairseq_model, name, replacement)
    train_module = sys.modules.get("fairseq_cli.train")  # imported when training (importing it sets up logging)
    for name, replacement in TRAIN_REPLACEMENTS.items() if train_module else ():
        replace(train_module, name, replacement)
    logger.debug("patched fairseq.checkpoint_utils: %s; fairseq_cli.train: %s; distributed_fairseq_model: %s",
                 ", ".join(REPLACEMENTS), ", ".join(TRAIN_REPLACEMENTS), ", ".join(DDP_REPLACEMENTS))


def uninstall() -> None:
    """Put back every attribute `replace()` changed, newest first (tests; the autouse fixture of conftest)."""
    while _patches:
        patch = _patches.pop()
        if patch.own:
            setattr(patch.owner, patch.name, patch.replaced)
        else:
            delattr(patch.owner, patch.name)
