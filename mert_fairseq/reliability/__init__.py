"""Never lose a run: atomic checkpoints and resume past damaged ones (`checkpoints`), skipping
non-finite updates (`numerics`), and the fault-injection harness (`fault_injection`, `fault_points`).
See docs/reliability.md."""
