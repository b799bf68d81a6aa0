"""Fault injection: named kill points inside a training process (`fault_points`, inert unless
MERT_FAULT_POINT / MERT_FAULT_NAN_UPDATES are set) and the harness that kills and resumes training and
compares the result with an uninterrupted run (`fault_injection`). See docs/reliability.md."""
