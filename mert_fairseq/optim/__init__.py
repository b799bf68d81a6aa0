"""Optimizers registered with fairseq by importing the plugin (`optimizer._name=...`)."""
from mert_fairseq.optim import adamw_torch  # noqa: F401  (registers "adamw_torch")
