"""Checkpoints that survive a kill at any instant, and resuming past a damaged `checkpoint_last.pt`.

* `atomic_torch_save` / `atomic_copy`: the file is written to a temporary file beside it, fsync'ed and
  renamed over the target (then the directory is fsync'ed): a reader sees the old file or the complete new
  one (fairseq's own copy to `checkpoint_last.pt` is a plain copy that a kill leaves torn);
* `resume_checkpoint`: a `checkpoint_last.pt` that fails its checksums (zero bytes, truncated, garbage, bit
  flips) is reported with its path, and the run resumes from the intact checkpoint with the most updates in
  `checkpoint.save_dir`, or stops with a clear message when there is none;
* `stop_if_already_complete`: a run resumed at `max_update` ends at once.

fairseq reaches these through the patches in `mert_fairseq.tasks.fairseq_patches`.
"""
from __future__ import annotations

import copy
import glob
import logging
import os
import shutil
from typing import IO, Callable, Optional

import torch
from omegaconf import OmegaConf, open_dict

from mert_fairseq.checkpoint.safe_load import CheckpointError, checkpoint_damage, checkpoint_num_updates
from mert_fairseq.common.atomic_files import atomic_open

logger = logging.getLogger(__name__)

_COPY_CHUNK = 8 << 20


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unwrapped(f: IO[bytes]) -> IO[bytes]:
    return f


def atomic_torch_save(obj, filename: str, wrap: Callable[[IO[bytes]], IO[bytes]] = _unwrapped) -> None:
    """torch.save to a temporary file beside `filename`, fsync, rename onto it, fsync the directory.
    `wrap` wraps the temporary file (the fault-injection harness's kill point)."""
    with atomic_open(filename, "wb") as f:
        torch.save(obj, wrap(f))
    _fsync_dir(filename)


def atomic_copy(src: str, dst: str, wrap: Callable[[IO[bytes]], IO[bytes]] = _unwrapped) -> None:
    """Copy `src` to `dst` through a temporary file + fsync + rename: `dst` is never partial."""
    with open(src, "rb") as source, atomic_open(dst, "wb") as target:
        shutil.copyfileobj(source, wrap(target), _COPY_CHUNK)
    _fsync_dir(dst)


def is_local(path: str) -> bool:
    return "://" not in str(path)


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


def restore_path(cfg) -> Optional[str]:
    if cfg.restore_file == "checkpoint_last.pt":
        return os.path.join(cfg.save_dir, f"checkpoint_last{cfg.checkpoint_suffix or ''}.pt")
    return cfg.restore_file


def with_restore_file(cfg, path: str):
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
