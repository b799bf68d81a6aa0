"""Export of MERT fairseq checkpoints to Hugging Face transformers (`convert.py`), with this project's
own remote code (`configuration_mert.py`, `modeling_mert.py`, plus `models/teachers/cqt.py` as `cqt.py`;
copied into every exported folder)."""
