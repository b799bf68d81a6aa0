"""Data preparation for MERT pretraining: manifests, teacher labels, a demo corpus, validation.

Modules (each has a ``main(argv)`` used by the matching ``scripts/*.py`` wrapper):

- ``manifest``: convert audio to 24 kHz mono wav and write fairseq ``train.tsv``/``valid.tsv``.
- ``encodec_labels``: EnCodec 24 kHz codes (8 codebooks x 1024 at 75 Hz) as label files.
- ``kmeans_labels``: HuBERT-style k-means labels on MFCC (or MERT layer) features.
- ``demo_corpus``: a seeded synthetic music corpus for tests and demos.
- ``validate``: check manifests, audio and label files against each other.

Every label type uses the same frame rule: a file of ``n`` samples at 24 kHz has
``ceil(n / 320)`` label frames (75 Hz), frame ``j`` starting at sample ``320 * j``.
"""
