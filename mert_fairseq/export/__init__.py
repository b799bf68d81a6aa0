"""Export of MERT fairseq checkpoints to Hugging Face transformers (`convert.py`), with this project's
own remote code (`configuration_mert.py`, `modeling_mert.py`; copied into every exported folder)."""
