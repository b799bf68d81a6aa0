"""Data preparation for MERT pretraining: manifests, teacher labels, a demo corpus, validation.

Modules (those with a command line have a ``main(argv)`` used by the matching ``scripts/*.py`` wrapper):

- ``manifest``: convert audio to 24 kHz mono wav and write fairseq ``train.tsv``/``valid.tsv``.
- ``encodec_labels``: EnCodec 24 kHz codes (8 codebooks x 1024 at 75 Hz) as label files.
- ``kmeans_labels``: HuBERT-style k-means labels (fit, apply, command line) of
  ``kmeans_features`` (MFCC, chroma, CQT, chord, onset or MERT-layer frame features) with
  ``kmeans_model`` (MiniBatchKMeans fitting, nearest centroid, the data-only .npz model file).
- ``demo_corpus``: a seeded synthetic music corpus for tests and demos.
- ``validate``: check manifests, audio and label files against each other.
- ``merge_parts``: label files written in parts by sharded jobs, and their merge.
- ``common``: frame rule, label/dictionary files, atomic outputs, job sharding, resumable work.
- ``benchmark``: files/s of manifest preparation on many tiny files.

Every label type uses the same frame rule: a file of ``n`` samples at 24 kHz has
``ceil(n / 320)`` label frames (75 Hz), frame ``j`` starting at sample ``320 * j``.
"""
