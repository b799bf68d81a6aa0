"""The fault-injection entry point: fairseq-hydra-train with the fault hooks armed by MERT_FAULT_*.

    python -m mert_fairseq.testing.fault_train <fairseq-hydra-train arguments>

Installs mert-fairseq's patches of fairseq and, on top of them through the same registry, the hooks that
`fault_points.Faults.from_env()` reads from MERT_FAULT_POINT / MERT_FAULT_NAN_UPDATES /
MERT_FAULT_RANK_WEIGHTS (none set: plain training), then runs fairseq-hydra-train's main in this process.
The harness (`fault_injection`), the tests and `scripts/run_training.sh` with TRAIN_MODULE set start
training through here; the hooks live in this process (and its forked data-loader workers), not in workers
that fairseq spawns for several GPUs per process.
"""
from __future__ import annotations

import sys
from typing import List


def command(python: str = sys.executable) -> List[str]:
    """The command line that starts this entry point (followed by fairseq-hydra-train's arguments)."""
    return [python, "-m", "mert_fairseq.testing.fault_train"]


def main() -> None:
    from fairseq_cli import hydra_train  # imports fairseq_cli.train, whose stop check the patches replace

    from mert_fairseq.testing import fault_points

    fault_points.install(fault_points.Faults.from_env())
    sys.argv[0] = "fairseq-hydra-train"
    hydra_train.cli_main()


if __name__ == "__main__":
    main()
