"""Performance tools: the training-step benchmark with the original's formulation as reference
(`step_benchmark`, `reference`), MFU accounting (`mfu`), data-loading and manifest-preparation throughput,
and the GPU box check (`gpu_check`)."""
