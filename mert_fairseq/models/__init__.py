"""The `mert` model: config (`mert_config`), CNN + transformer encoder (`mert_model`, `transformer_encoder`),
masked prediction logits (`masked_prediction`), in-batch noise mixture (`noise_mixture`), and its teachers."""
