"""Evaluation of pretrained MERT features: probing (offline and during training) and training plots."""
