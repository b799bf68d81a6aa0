#!/usr/bin/env python
"""Convert a MERT fairseq checkpoint to a verified Hugging Face folder.

    python scripts/convert_to_hf.py --checkpoint CKPT.pt --out-dir OUT [--expect mert_base]
    (the original's --checkpoint_path CKPT.pt --pytorch_dump_folder OUT also works)

Exit status 0 when the export reproduces every hidden state of the fairseq model within --atol (1e-5),
1 when the verification fails (the report is in OUT/verification.json), 2 for other errors.
"""
import sys

from mert_fairseq.export.convert import main

if __name__ == "__main__":
    sys.exit(main())
