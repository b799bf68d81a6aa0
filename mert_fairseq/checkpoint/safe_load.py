"""Reading fairseq checkpoints safely and telling a damaged file from a hostile one.

torch >= 2.6 loads with `weights_only=True`: only tensors and allow-listed plain classes unpickle.
The classes fairseq checkpoints contain (configs, dictionaries, meters, numpy scalars) are allow-listed
with `torch.serialization.add_safe_globals`; anything else (a `__reduce__` payload) is refused, so
loading a hostile file never runs its code. Checkpoints are zip archives whose members carry CRC-32
checksums: `checkpoint_damage` uses them to find torn, truncated or bit-flipped files.

This module imports nothing from the model, so the model and `mert_fairseq.checkpoint.model_loading` can both use it.
"""
from __future__ import annotations

import argparse
import collections
import os
import pickle
import typing
import zipfile
from typing import Optional

import numpy as np
import torch
from fairseq.data.dictionary import Dictionary


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that would need arbitrary code to unpickle (refused, nothing was run)."""


def _safe_classes() -> list:
    import omegaconf
    from fairseq.logging import meters
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, EnumNode, FloatNode, IntegerNode, StringNode

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 renamed np.core
    classes = [
        Dictionary, argparse.Namespace, collections.OrderedDict, collections.defaultdict, typing.Any,
        dict, list, tuple, set, int, float, str, bool,
        omegaconf.DictConfig, omegaconf.ListConfig, ContainerMetadata, Metadata,
        AnyNode, BooleanNode, EnumNode, FloatNode, IntegerNode, StringNode,
        meters.AverageMeter, meters.SumMeter, meters.TimeMeter, meters.StopwatchMeter, meters.MetersDict,
        np.dtype, np.ndarray, multiarray._reconstruct, multiarray.scalar,
        np.float64, np.float32, np.int64, np.int32, np.bool_,
    ]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np.dtypes, name):
            classes.append(getattr(np.dtypes, name))
    for name in ("ConcatMeter", "GroupMeter"):
        if hasattr(meters, name):
            classes.append(getattr(meters, name))
    return classes


def allow_fairseq_checkpoints() -> None:
    """Allow-list the classes fairseq checkpoints contain (idempotent)."""
    torch.serialization.add_safe_globals(_safe_classes())


def checkpoint_damage(path: str | os.PathLike) -> Optional[str]:
    """None if `path` is a complete checkpoint archive whose checksums all match, else what is wrong.

    Reads the whole file once (CRC-32 of every member): catches zero-byte, truncated (torn copy,
    full disk), garbage and bit-flipped files, which `torch.load` may not (flipped tensor bytes load)."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        return f"cannot stat ({exc.strerror})"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"not a complete checkpoint archive ({size} bytes; {exc}): truncated, torn or not a checkpoint"
    if bad_member is not None:
        return f"checksum mismatch in member {bad_member!r}: corrupted"
    return None


def load_checkpoint_state(path: str | os.PathLike, mmap: bool = False) -> dict:
    """torch.load a fairseq checkpoint on CPU with `weights_only=True` and the allow-list.

    Raises FileNotFoundError, UnsafeCheckpointError (a class outside the allow-list: the file is
    refused and nothing in it runs) or CheckpointError (damaged); every message names the file.
    `mmap=True` maps tensor storage instead of reading it (cheap look at the metadata)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found")
    allow_fairseq_checkpoints()
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        damage = checkpoint_damage(path)
        if damage is not None:
            raise CheckpointError(f"{path}: damaged checkpoint: {damage}") from exc
        if isinstance(exc, pickle.UnpicklingError):
            raise UnsafeCheckpointError(
                f"{path}: refused: the checkpoint needs classes or functions outside the allow-list to "
                f"unpickle (possibly a code payload; nothing was run). Only load it with weights_only=False "
                f"if you trust its origin. torch said: {str(exc).splitlines()[0]}") from exc
        raise CheckpointError(f"{path}: cannot load checkpoint ({exc})") from exc


def checkpoint_num_updates(path: str | os.PathLike) -> int:
    """The update count a fairseq training checkpoint was saved at (reads metadata only)."""
    state = load_checkpoint_state(path, mmap=True)
    history = state.get("optimizer_history") or [{}]
    return int(history[-1].get("num_updates", 0))
