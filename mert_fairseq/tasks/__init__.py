"""The `mert_pretraining` task and the fairseq patches it installs when it is set up (`fairseq_patches`)."""
