"""Checkpoints that survive a kill at any instant, and resuming past a damaged `checkpoint_last.pt`.

fairseq-fixed 0.12.3.1 writes the first checkpoint file of a save and then *copies* it to the other
names (`checkpoint_last.pt`, `checkpoint_best.pt`, ...) with a plain, non-atomic file copy: a kill
or a full disk during the copy leaves a torn `checkpoint_last.pt` that stops every later start.
`install()` (run when the plugin is imported) makes both steps atomic and durable:

* every checkpoint file is written to a temporary file beside it, fsync'ed and renamed over the
  target (then the directory is fsync'ed): a reader sees the old file or the complete new one;
* on start, a `checkpoint_last.pt` that fails its checksums (zero bytes, truncated, garbage,
  bit flips) is reported with its path, and with `task.resume_from_intact_checkpoint` (default on)
  the run resumes from the intact checkpoint with the most updates in `checkpoint.save_dir`,
  or stops with a clear message when there is none. Hostile files are refused, never skipped over:
  resume and `checkpoint.restore_file` go through fairseq's `load_checkpoint_to_cpu`, which runs here
  with `weights_only=True` enforced and the allow-list of mert_fairseq.checkpoint_io.
"""
from __future__ import annotations

import contextlib
import copy
import glob
import logging
import os
import pickle
import shutil
from typing import Iterator, Optional

import torch
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager
from omegaconf import OmegaConf, open_dict

from mert_fairseq.checkpoint_io import (
    CheckpointError,
    UnsafeCheckpointError,
    allow_fairseq_checkpoints,
    checkpoint_damage,
    checkpoint_num_updates,
)
from mert_fairseq.fileio import atomic_open
from mert_fairseq.reliability.fault_points import halfway_writer

logger = logging.getLogger(__name__)

_COPY_CHUNK = 8 << 20


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj, filename: str) -> None:
    """torch.save to a temporary file beside `filename`, fsync, rename onto it, fsync the directory."""
    with atomic_open(filename, "wb") as f:
        torch.save(obj, halfway_writer(f, "checkpoint_write"))
    _fsync_dir(filename)


def atomic_copy(src: str, dst: str) -> None:
    """Copy `src` to `dst` through a temporary file + fsync + rename: `dst` is never partial."""
    with open(src, "rb") as source, atomic_open(dst, "wb") as target:
        shutil.copyfileobj(source, halfway_writer(target, "checkpoint_copy"), _COPY_CHUNK)
    _fsync_dir(dst)


def _is_local(path: str) -> bool:
    return "://" not in str(path)


# ---------------------------------------------------------------- fairseq entry points (patched)
_stock = {}


def _persistent_save(obj, filename, async_write: bool = False):
    if async_write or not isinstance(filename, str) or not _is_local(filename):
        return _stock["torch_persistent_save"](obj, filename, async_write)
    atomic_torch_save(obj, filename)


def _copy(src_path: str, dst_path: str, overwrite: bool = False, **kwargs) -> bool:
    if not (_is_local(src_path) and _is_local(dst_path)) or kwargs:
        return _stock["copy"](src_path, dst_path, overwrite, **kwargs)
    if os.path.exists(dst_path) and not overwrite:
        return False
    atomic_copy(src_path, dst_path)
    return True


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force `torch.load(weights_only=True)` (fairseq's call passes no `weights_only`) for the block."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def load_checkpoint_to_cpu(path, *args, **kwargs):
    """fairseq's `load_checkpoint_to_cpu` (resume, restore_file, fairseq's model loading) with
    `weights_only=True` enforced and errors that name the file."""
    allow_fairseq_checkpoints()
    try:
        with _weights_only_loads():
            return _stock["load_checkpoint_to_cpu"](path, *args, **kwargs)
    except pickle.UnpicklingError as exc:
        if _is_local(path) and checkpoint_damage(path) is not None:
            raise CheckpointError(f"{path}: damaged checkpoint: {checkpoint_damage(path)}") from exc
        raise UnsafeCheckpointError(
            f"{path}: refused: the checkpoint needs classes or functions outside the allow-list to unpickle "
            f"(possibly a code payload; nothing was run). torch said: {str(exc).splitlines()[0]}") from exc
    except RuntimeError as exc:
        if _is_local(path) and checkpoint_damage(path) is not None:
            raise CheckpointError(f"{path}: damaged checkpoint: {checkpoint_damage(path)}") from exc
        raise


def newest_intact_checkpoint(save_dir: str, exclude: str = "") -> Optional[tuple]:
    """(path, num_updates) of the checkpoint*.pt in `save_dir` with the most updates whose checksums
    all match, or None."""
    found = []
    for path in glob.glob(os.path.join(save_dir, "checkpoint*.pt")):
        if os.path.abspath(path) == os.path.abspath(exclude):
            continue
        try:
            found.append((checkpoint_num_updates(path), path))
        except Exception as exc:  # damaged or refused: report and look further
            logger.warning("not resuming from %s: %s", path, exc)
    for updates, path in sorted(found, key=lambda t: (-t[0], os.path.basename(t[1]) != "checkpoint_best.pt")):
        damage = checkpoint_damage(path)
        if damage is None:
            return path, updates
        logger.warning("not resuming from %s: %s", path, damage)
    return None


def _restore_path(cfg) -> Optional[str]:
    if cfg.restore_file == "checkpoint_last.pt":
        return os.path.join(cfg.save_dir, f"checkpoint_last{cfg.checkpoint_suffix or ''}.pt")
    return cfg.restore_file


def _with_restore_file(cfg, path: str):
    cfg = copy.deepcopy(cfg)
    if OmegaConf.is_config(cfg):
        with open_dict(cfg):
            cfg.restore_file = path
    else:
        cfg.restore_file = path
    return cfg


def remove_stale_temp_files(save_dir: str) -> int:
    """Delete temporary checkpoint files a killed writer left in `save_dir`; returns how many."""
    stale = glob.glob(os.path.join(glob.escape(save_dir), ".checkpoint*.tmp"))
    stale += glob.glob(os.path.join(glob.escape(save_dir), "checkpoint*.pt.tmp"))  # fairseq's own name
    for path in stale:
        os.remove(path)
        logger.warning("removed %s (partial checkpoint left by an interrupted write)", path)
    return len(stale)


def load_checkpoint(cfg, trainer, **passthrough_args):
    """fairseq's `checkpoint_utils.load_checkpoint`, after checking the checkpoint it will resume from."""
    if trainer.is_data_parallel_master and os.path.isdir(cfg.save_dir):
        remove_stale_temp_files(cfg.save_dir)
    path = _restore_path(cfg)
    if path and _is_local(path) and os.path.exists(path):
        fall_back = getattr(getattr(trainer.task, "cfg", None), "resume_from_intact_checkpoint", True)
        chosen = resume_checkpoint(path, cfg.save_dir, fall_back, explicit=cfg.restore_file != "checkpoint_last.pt")
        if chosen != path:
            cfg = _with_restore_file(cfg, chosen)
    extra_state, epoch_itr = _stock["load_checkpoint"](cfg, trainer, **passthrough_args)
    stop_if_already_complete(trainer.get_num_updates(), trainer.cfg.optimization.max_update, path)
    return extra_state, epoch_itr


def stop_if_already_complete(num_updates: int, max_update: Optional[int], path: Optional[str]) -> None:
    """Exit (status 0) when the resumed checkpoint has reached `max_update`.

    fairseq checks max_update only after a training step, so a job killed after its final checkpoint
    was written (between the save and the process exit) would train one update more when it is started
    again, and end different from a run that was never killed."""
    if max_update and num_updates >= max_update:
        logger.info("%s is at update %d >= optimization.max_update=%d: training is already complete",
                    path, num_updates, max_update)
        raise SystemExit(0)


def resume_checkpoint(path: str, save_dir: str, fall_back: bool = True, explicit: bool = False) -> str:
    """`path` if its checksums match; else (it is reported) the newest intact checkpoint in `save_dir`
    when `fall_back` and `path` is not an explicit `checkpoint.restore_file`; else CheckpointError."""
    damage = checkpoint_damage(path)
    if damage is None:
        return path
    logger.error("%s: damaged checkpoint: %s", path, damage)
    if explicit:
        raise CheckpointError(f"{path}: checkpoint.restore_file is damaged: {damage}")
    if not fall_back:
        raise CheckpointError(
            f"{path}: damaged checkpoint: {damage}. Not resuming from an older checkpoint because "
            "task.resume_from_intact_checkpoint=false; move the file away or set it to true.")
    intact = newest_intact_checkpoint(save_dir, exclude=path)
    if intact is None:
        raise CheckpointError(
            f"{path}: damaged checkpoint: {damage}; no intact checkpoint*.pt in {save_dir} to resume "
            "from. Move the damaged file away to start from scratch.")
    logger.warning("resuming from %s (update %d) instead of the damaged %s", intact[0], intact[1], path)
    return intact[0]


def install() -> None:
    """Route fairseq's checkpoint writes, copies and resume through this module (idempotent)."""
    if _stock:
        return
    _stock.update(torch_persistent_save=checkpoint_utils.torch_persistent_save, copy=PathManager.copy,
                  load_checkpoint=checkpoint_utils.load_checkpoint,
                  load_checkpoint_to_cpu=checkpoint_utils.load_checkpoint_to_cpu)
    checkpoint_utils.torch_persistent_save = _persistent_save
    PathManager.copy = staticmethod(_copy)
    checkpoint_utils.load_checkpoint = load_checkpoint
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
