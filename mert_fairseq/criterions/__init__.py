"""Criteria registered with fairseq by importing the plugin (`criterion._name=...`)."""
from mert_fairseq.criterions import mert_criterion  # noqa: F401  (registers "mert")
