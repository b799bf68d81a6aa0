"""Fault injection: the training entry point that arms fault hooks (`fault_train`, `python -m
mert_fairseq.testing.fault_train`), the hooks and named kill points it installs from MERT_FAULT_* variables
(`fault_points`), and the harness that kills and resumes training and compares the result with an
uninterrupted run (`fault_injection`). See docs/reliability.md."""
