"""Performance tools: the training-step benchmark (`step_benchmark`, driving fairseq's trainer built by
`training_setup` on a `synthetic_corpus`, timed by `timing`, reported by `report`, with `side_measurements`)
and the original's formulation as its reference (`reference`), MFU accounting (`mfu`), data-loading and
manifest-preparation throughput, and the GPU box check (`gpu_check`)."""
