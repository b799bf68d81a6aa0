"""Run fairseq-hydra-train with torch's CUDA-only DataLoader exit path switched on, on any device.

With pin_memory active (a CUDA device) and persistent workers, torch registers an atexit hook per
worker that joins it with a 5 s timeout (`_MultiProcessingDataLoaderIter._clean_up_worker`). On a CPU
nothing is pinned and the hook is never registered; this wrapper registers it exactly as torch does,
so the exit behaviour of a GPU run can be tested on CPU.
    python tests/cuda_loader_exit.py [--without-plugin-shutdown] <fairseq-hydra-train arguments>
"""
import atexit
import sys

from torch.utils.data import dataloader

_init = dataloader._MultiProcessingDataLoaderIter.__init__


def _init_with_cuda_exit_hooks(self, loader):
    _init(self, loader)
    if self._persistent_workers and not self._pin_memory:  # torch does this when self._pin_memory
        for w in self._workers:
            atexit.register(dataloader._MultiProcessingDataLoaderIter._clean_up_worker, w)


dataloader._MultiProcessingDataLoaderIter.__init__ = _init_with_cuda_exit_hooks

if __name__ == "__main__":
    if "--without-plugin-shutdown" in sys.argv:  # the behaviour before the fix, to show the test can fail
        sys.argv.remove("--without-plugin-shutdown")
        from mert_fairseq.data import loader_shutdown

        loader_shutdown.track = lambda epoch_iterator: None
    from fairseq_cli.hydra_train import cli_main

    sys.argv[0] = "fairseq-hydra-train"
    cli_main()
