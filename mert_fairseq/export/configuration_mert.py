"""Configuration of MERT models exported by mert-fairseq (Hugging Face remote code).

The field names are those of `transformers.HubertConfig` wherever the meaning is the same, so a
MERT model without the CQT input front end, DeepNorm or the stable CNN layer norm can also be
loaded with `transformers.HubertModel` from the very same folder. This file only needs
`transformers` (any version with `PretrainedConfig`).
"""
from transformers import PretrainedConfig


class MERTConfig(PretrainedConfig):
    r"""
    Args (HuBERT-compatible):
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act:
            transformer width D, depth, heads, FFN width and FFN activation.
        hidden_dropout, attention_dropout, activation_dropout, feat_proj_dropout, layerdrop:
            dropouts as in fairseq (`dropout`, `attention_dropout`, `activation_dropout`,
            `dropout_input`, `encoder_layerdrop`); only active in training mode.
        layer_norm_eps: epsilon of every LayerNorm (fairseq: 1e-5).
        feat_extract_norm: "group" (GroupNorm in conv block 0 only, fairseq `extractor_mode=default`)
            or "layer" (LayerNorm in every conv block, fairseq `extractor_mode=layer_norm`).
        conv_dim, conv_kernel, conv_stride, conv_bias: the CNN blocks (fairseq `conv_feature_layers`).
        num_conv_pos_embeddings, num_conv_pos_embedding_groups: positional convolution kernel / groups.
        conv_pos_batch_norm: always False (MERT's positional convolution is weight-normalised); written
            because transformers >= 4.48 HuBERT code, which the original MERT remote code builds on, reads it.
        do_stable_layer_norm: pre-LN encoder (fairseq `layer_norm_first`, MERT 330M) instead of post-LN.
        feat_proj_layer_norm: LayerNorm on the CNN features before the projection (always True for MERT).
        mask_time_prob: kept > 0 so that the learned mask embedding (`masked_spec_embed`) exists.

    Args (MERT only):
        deepnorm: DeepNet residual scaling: residual * (2 * num_hidden_layers) ** 0.25 (post-LN only).
        feature_extractor_cqt, feature_extractor_cqt_bins: concatenate a constant-Q transform
            (hop = total CNN stride, 7 octaves from 32.7 Hz, magnitude) to the CNN features.
        do_cnn_feat_stable_layernorm: non-affine LayerNorm after the feature projection as well.
        wav_normalize: layer-normalise each waveform inside the model before the CNN.
        sample_rate: the sampling rate the model was trained at (Hz).
        attention_relax: informational (the original's max-subtraction before softmax, a numerical no-op).
    """

    model_type = "mert"

    def __init__(
        self,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout=0.1,
        activation_dropout=0.0,
        attention_dropout=0.1,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        layer_norm_eps=1e-5,
        initializer_range=0.02,
        feat_extract_norm="group",
        feat_extract_activation="gelu",
        conv_dim=(512, 512, 512, 512, 512, 512, 512),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_bias=False,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        conv_pos_batch_norm=False,
        do_stable_layer_norm=False,
        feat_proj_layer_norm=True,
        mask_time_prob=0.05,
        mask_time_length=10,
        deepnorm=False,
        feature_extractor_cqt=False,
        feature_extractor_cqt_bins=336,
        do_cnn_feat_stable_layernorm=False,
        wav_normalize=False,
        sample_rate=24000,
        attention_relax=-1.0,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout = hidden_dropout
        self.activation_dropout = activation_dropout
        self.attention_dropout = attention_dropout
        self.feat_proj_dropout = feat_proj_dropout
        self.layerdrop = layerdrop
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.feat_extract_norm = feat_extract_norm
        self.feat_extract_activation = feat_extract_activation
        self.conv_dim = list(conv_dim)
        self.conv_stride = list(conv_stride)
        self.conv_kernel = list(conv_kernel)
        self.conv_bias = conv_bias
        self.num_feat_extract_layers = len(self.conv_dim)
        self.num_conv_pos_embeddings = num_conv_pos_embeddings
        self.num_conv_pos_embedding_groups = num_conv_pos_embedding_groups
        self.conv_pos_batch_norm = conv_pos_batch_norm
        self.do_stable_layer_norm = do_stable_layer_norm
        self.feat_proj_layer_norm = feat_proj_layer_norm
        self.mask_time_prob = mask_time_prob
        self.mask_time_length = mask_time_length
        self.deepnorm = deepnorm
        self.feature_extractor_cqt = feature_extractor_cqt
        self.feature_extractor_cqt_bins = feature_extractor_cqt_bins
        self.do_cnn_feat_stable_layernorm = do_cnn_feat_stable_layernorm
        self.wav_normalize = wav_normalize
        self.sample_rate = sample_rate
        self.attention_relax = attention_relax
        super().__init__(**kwargs)
        if not (len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel)):
            raise ValueError(
                f"conv_dim ({len(self.conv_dim)}), conv_stride ({len(self.conv_stride)}) and conv_kernel "
                f"({len(self.conv_kernel)}) must have the same length"
            )
        if feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm={feat_extract_norm!r}: expected 'group' or 'layer'")
        if conv_pos_batch_norm:
            raise ValueError("conv_pos_batch_norm=True is not a MERT layout (its positional convolution is "
                             "weight-normalised)")
        if deepnorm and do_stable_layer_norm:
            raise ValueError("deepnorm requires the post-LN encoder (do_stable_layer_norm=False)")
