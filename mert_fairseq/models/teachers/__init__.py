"""Targets the model learns from besides the label files: the CQT musical teacher (also the CQT input
front end), the mel teacher, and BEST-RQ random-projection codes computed on the fly."""
