"""Checkpoints: safe reading (`safe_load`: weights_only with an allow-list, damaged vs hostile files),
atomic writes and resume past a damaged `checkpoint_last.pt` (`resume`), and building a `mert` model from
any MERT checkpoint (`model_loading`)."""
