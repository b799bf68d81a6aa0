#!/usr/bin/env python
"""Extract per-layer MERT features to one .npy per audio input.

    python scripts/extract_features.py INPUT [INPUT ...] --output-dir FEATS \
        (--checkpoint CKPT.pt | --hf-model HF_FOLDER) [--layers all|0,6,12] [--reduce frame|mean] \
        [--window-seconds 30] [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--overwrite] [--skip-errors]

INPUT: audio files, folders (searched recursively) or manifest .tsv files (line 1 = audio root).
Output names mirror the inputs (folder/manifest relative paths, or the file's base name) with .npy;
arrays are float32 (layers, frames, dim) for --reduce frame, (layers, dim) for --reduce mean.
Files are written atomically; existing outputs are kept unless --overwrite (so a run can be resumed).
Any sampling rate and channel count is accepted (channel mean, resampled to the model's rate).
"""
import argparse
import logging
import sys

from mert_fairseq.evaluation.features import (AUDIO_EXTENSIONS, DTYPES, FeatureExtractionError, extract_to_folder,
                                              load_feature_extractor, parse_layers)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="audio files, folders or manifest .tsv files")
    parser.add_argument("--output-dir", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="fairseq checkpoint of a `mert` model")
    source.add_argument("--hf-model", help="exported Hugging Face folder (scripts/convert_to_hf.py)")
    parser.add_argument("--layers", default="all", help="'all' or a comma list of hidden-state indices "
                        "(0 = input of the transformer, N = last layer); ranges like 4-6 allowed")
    parser.add_argument("--reduce", choices=["frame", "mean"], default="frame",
                        help="frame: (layers, frames, dim); mean: average over time, (layers, dim)")
    parser.add_argument("--window-seconds", type=float, default=30.0,
                        help="process long files in windows of this length (<= 0: whole file at once)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="weights and audio in this precision (outputs stay float32)")
    parser.add_argument("--extensions", default=",".join(AUDIO_EXTENSIONS),
                        help="audio extensions searched in folders")
    parser.add_argument("--overwrite", action="store_true", help="recompute existing .npy files")
    parser.add_argument("--skip-errors", action="store_true",
                        help="log unreadable/too short files and go on (exit status 1 at the end)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        layers = parse_layers(args.layers)
        extractor = load_feature_extractor(checkpoint=args.checkpoint, hf_model=args.hf_model, device=args.device,
                                           dtype=args.dtype)
        summary = extract_to_folder(extractor, args.inputs, args.output_dir, layers=layers, reduce=args.reduce,
                                    window_seconds=args.window_seconds, overwrite=args.overwrite,
                                    skip_errors=args.skip_errors, extensions=args.extensions.split(","))
    except (FeatureExtractionError, ValueError, FileNotFoundError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    print(f"written {summary['written']}, skipped (already there) {summary['skipped']}, "
          f"failed {len(summary['failed'])} -> {args.output_dir}")
    for msg in summary["failed"]:
        print(f"  failed: {msg}", file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
