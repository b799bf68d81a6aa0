"""Shut down fairseq's DataLoader workers in order when training ends, so the process exits at once.

Why: fairseq-fixed's `FairseqTask.get_batch_iterator` builds its DataLoaders with
`persistent_workers=True` and `reuse_dataloader=True` (read from the task config, which has no such
fields, so always on), and always with `pin_memory=True`. When pinning really happens (a CUDA device),
torch registers, for every worker of a persistent iterator, an `atexit` hook that joins the worker
with a 5 s timeout and then kills it (`_MultiProcessingDataLoaderIter._clean_up_worker`). Nobody told
the workers to stop (the train iterator is mid-epoch at `max_update`, the valid iterator is kept for
reuse), so each join waits the full 5 s: 8 workers (train + valid at `dataset.num_workers=4`) add 40 s
after `done training`, 16 workers 80 s. On the CPU nothing is pinned, no hook is registered, and the
process exits at once. The stock `hubert` task goes through the same `get_batch_iterator`.

Fix: the task tracks the epoch iterators it hands out, and when the main thread finishes (before
any `atexit` hook runs: `threading._register_atexit`, as `concurrent.futures` does) each live
DataLoader iterator is shut down the way torch does it for an iterator that is deleted: stop the
pin-memory thread, send every worker its exit signal, join. torch's hooks then find the workers gone.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import Iterator, List

logger = logging.getLogger(__name__)

_tracked: "weakref.WeakSet" = weakref.WeakSet()
_hook_pid = None  # the process that registered the hook (forked DataLoader workers inherit it)


def track(epoch_iterator) -> None:
    """Shut down `epoch_iterator`'s DataLoader workers when the main thread finishes."""
    global _hook_pid
    try:
        _tracked.add(epoch_iterator)
    except TypeError:  # not weak-referenceable: nothing to track
        return
    if _hook_pid != os.getpid():
        register = getattr(threading, "_register_atexit", None)  # runs before atexit hooks (3.9+)
        try:
            register(shutdown_all) if register is not None else atexit.register(shutdown_all)
        except RuntimeError:  # interpreter already shutting down
            atexit.register(shutdown_all)
        _hook_pid = os.getpid()


def _loader_iterators(obj, depth: int = 0) -> Iterator:
    """Live torch DataLoader iterators reachable from a fairseq epoch iterator (through its reused
    DataLoader, CountingIterator and BufferedIterator wrappers)."""
    if obj is None or depth > 6:
        return
    if hasattr(obj, "_shutdown_workers"):  # torch _MultiProcessingDataLoaderIter
        yield obj
        return
    for attr in ("dataloader", "_cur_epoch_itr", "_next_epoch_itr", "itr", "iterable", "_iterable", "_iterator"):
        child = obj.__dict__.get(attr) if hasattr(obj, "__dict__") else None
        if child is not None and child is not obj:
            yield from _loader_iterators(child, depth + 1)


def shutdown_loaders(epoch_iterator) -> int:
    """Shut down the worker processes (and pin-memory thread) behind one epoch iterator; returns how
    many DataLoader iterators were shut down."""
    seen: List = []
    for it in _loader_iterators(epoch_iterator):
        if any(it is s for s in seen):
            continue
        seen.append(it)
        it._shutdown_workers()
    return len(seen)


def shutdown_all() -> None:
    if _hook_pid != os.getpid():  # a forked worker finishing: its parent's loaders are not its own
        return
    n = 0
    for epoch_iterator in list(_tracked):
        try:
            n += shutdown_loaders(epoch_iterator)
        except Exception as exc:  # never turn a finished run into a failed exit
            logger.warning("could not shut down data loader workers cleanly: %s", exc)
    if n:
        logger.info("shut down %d data loader(s) with worker processes", n)
