"""From audio files to batches: audio reading (`audio`, windowed `audio_reader`), manifests (`manifest`,
`manifest_index`), label streams (`labels`), the `MERTDataset` that crops and collates them, seeded draws,
and the data-loader process hygiene (`allocator`, `loader_shutdown`)."""
