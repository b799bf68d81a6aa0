"""`MERTConfig`: the model's live fields; the original MERT model config's other fields, which have no effect
here, come from the table `NO_EFFECT_FIELDS` (a base class built from it), so original YAMLs and the configs
stored in published checkpoints load unchanged and warn once per field set away from its default."""

from dataclasses import dataclass, field
from typing import Tuple

from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.models.wav2vec.wav2vec2 import (
    EXTRACTOR_MODE_CHOICES,
    LAYER_TYPE_CHOICES,
    MASKING_DISTRIBUTION_CHOICES,
)
from omegaconf import II

from mert_fairseq.common.config_values import Accepted, accepted_fields

MASK_REPLACE_TYPE_CHOICES = ChoiceEnum(["in_batch", "in_sample"])
AUDIO_EXTRACT_TYPE_CHOICES = ChoiceEnum(["w2v_conv", "hstft_conv"])


# Fields accepted only so that original YAMLs and checkpoint configs load: name -> default, why it does nothing.
# MERTModel warns once when one is set away from its default (common.config_values.warn_fields_without_effect;
# the task's table: tasks.mert_pretraining_config.NO_EFFECT_FIELDS).
NO_EFFECT_FIELDS = {
    "audio_extract_type": Accepted("w2v_conv", "only the w2v_conv front end exists", AUDIO_EXTRACT_TYPE_CHOICES),
    "music_conv_nmel": Accepted(80, "hstft_conv front end is not implemented"),
    "music_conv_hoplen": Accepted(40, "hstft_conv front end is not implemented"),
    "subln": Accepted(False, "never wired into the encoder in the original"),
    "dropout_features": Accepted(0.0, "applied to a tensor nothing uses"),
    "chunk_nce_cal": Accepted(-1, "logits are computed by a normalised matmul, no per-class tensors to chunk"),
    "emb_grad_mult": Accepted(1.0, "commented out in the original"),
    "latent_temp": Accepted((2, 0.5, 0.999995), "legacy wav2vec field", Tuple[float, float, float]),
    "attention_relax": Accepted(-1.0, "subtracting the row max before softmax is a no-op for a stable softmax"),
    "depthwise_conv_kernel_size": Accepted(31, "conformer layers are not implemented"),
    "attn_type": Accepted("", "conformer layers are not implemented"),
    "pos_enc_type": Accepted("abs", "conformer layers are not implemented"),
}


@dataclass
class MERTConfig(accepted_fields("MERTConfigAccepted", NO_EFFECT_FIELDS)):
    label_rate: float = II("task.label_rate")

    # --- CNN front end ---
    extractor_mode: EXTRACTOR_MODE_CHOICES = field(
        default="default",
        metadata={"help": "default: one GroupNorm (512 groups) in conv block 0; layer_norm: LayerNorm in every block"},
    )
    conv_feature_layers: str = field(
        default="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
        metadata={"help": "python list of (dim, kernel, stride) conv blocks; total stride 320 = 75 Hz at 24 kHz"},
    )
    conv_bias: bool = field(default=False, metadata={"help": "bias in the CNN convolutions"})
    feature_grad_mult: float = field(
        default=1.0, metadata={"help": "scale the gradient into the CNN; <= 0 freezes it (eval mode, no grad)"}
    )
    do_cnn_feat_stable_layernorm: bool = field(
        default=False,
        metadata={"help": "non-affine LayerNorm on CNN features, plus a non-affine LayerNorm after post_extract_proj"},
    )
    wav_normalize: bool = field(
        default=False,
        metadata={"help": "normalise each waveform to zero mean / unit variance before the CNN (per sample)"},
    )
    feature_extractor_cqt: bool = field(
        default=False, metadata={"help": "concatenate a CQT (hop = CNN stride) to the CNN features as extra input"}
    )
    feature_extractor_cqt_bins: int = field(default=84, metadata={"help": "bins of the input CQT"})

    # --- transformer encoder ---
    encoder_layers: int = field(default=12, metadata={"help": "number of transformer layers"})
    encoder_embed_dim: int = field(default=768, metadata={"help": "transformer width D"})
    encoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "FFN inner width"})
    encoder_attention_heads: int = field(default=12, metadata={"help": "attention heads"})
    activation_fn: ChoiceEnum(utils.get_available_activation_fns()) = field(
        default="gelu", metadata={"help": "FFN activation"}
    )
    layer_type: LAYER_TYPE_CHOICES = field(
        default="transformer", metadata={"help": "only 'transformer' is implemented"}
    )
    layer_norm_first: bool = field(default=False, metadata={"help": "pre-LN encoder (330M) instead of post-LN (95M)"})
    conv_pos: int = field(default=128, metadata={"help": "kernel width of the convolutional positional embedding"})
    conv_pos_groups: int = field(default=16, metadata={"help": "groups of the convolutional positional embedding"})
    pos_conv_depth: int = field(default=1, metadata={"help": "depth of the positional conv; only 1 is implemented"})
    required_seq_len_multiple: int = field(
        default=2, metadata={"help": "pad the encoder input to a multiple of this many frames"}
    )
    checkpoint_activations: bool = field(
        default=False, metadata={"help": "recompute encoder layer activations in backward to save memory"}
    )
    deepnorm: bool = field(
        default=False, metadata={"help": "DeepNet residual scaling alpha=(2N)^1/4 and init scaling (8N)^-1/4 (post-LN)"}
    )
    fp16: bool = field(default=False, metadata={"help": "informational; precision is set by common.fp16/bf16"})

    # --- dropouts ---
    dropout: float = field(default=0.1, metadata={"help": "dropout in the transformer"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    encoder_layerdrop: float = field(default=0.0, metadata={"help": "probability of skipping a layer in training"})
    dropout_input: float = field(default=0.0, metadata={"help": "dropout on the projected CNN features"})

    # --- prediction heads ---
    final_dim: int = field(default=0, metadata={"help": "projection dim of outputs and label embeddings (0 = D)"})
    untie_final_proj: bool = field(default=False, metadata={"help": "one projection per label stream"})
    target_glu: bool = field(default=False, metadata={"help": "Linear + GLU on the label embeddings"})
    logit_temp: float = field(default=0.1, metadata={"help": "cosine logits are divided by this"})
    learnable_temp: bool = field(default=False, metadata={"help": "learn one log inverse temperature per stream"})
    learnable_temp_init: float = field(default=0.1, metadata={"help": "initial learnable temperature"})
    learnable_temp_max: float = field(default=100.0, metadata={"help": "max of the learned logit scale"})
    random_codebook: int = field(
        default=-1, metadata={"help": "> 0: each step predicts this many randomly chosen label streams"}
    )
    skip_masked: bool = field(default=False, metadata={"help": "no loss on masked frames"})
    skip_nomask: bool = field(default=False, metadata={"help": "no loss on unmasked frames"})

    # --- masking ---
    mask_prob: float = field(default=0.65, metadata={"help": "span-start probability (x T / length spans)"})
    mask_length: int = field(default=10, metadata={"help": "span length in frames"})
    mask_selection: MASKING_DISTRIBUTION_CHOICES = field(default="static", metadata={"help": "span length law"})
    mask_other: float = field(default=0, metadata={"help": "secondary span-length argument"})
    no_mask_overlap: bool = field(default=False, metadata={"help": "forbid overlapping spans"})
    mask_min_space: int = field(default=1, metadata={"help": "min gap between spans when no_mask_overlap"})
    mask_replace: float = field(
        default=0.0, metadata={"help": "probability a masked frame takes another frame's features (BERT-style)"}
    )
    mask_replace_type: MASK_REPLACE_TYPE_CHOICES = field(
        default="in_sample", metadata={"help": "replacement frames come from the same sample or the whole batch"}
    )
    mask_origin: float = field(default=0.0, metadata={"help": "probability a masked frame keeps its own features"})
    # the original's mask schedules: only their '[]' default is accepted (MERTModel refuses a schedule: the data
    # loader draws the masks and does not know the update)
    mask_dynamic_prob_step: str = field(default="[]", metadata={"help": "must stay []: mask schedules are refused"})
    mask_dynamic_prob: str = field(default="[]", metadata={"help": "must stay []: mask schedules are refused"})
    mask_dynamic_len_step: str = field(default="[]", metadata={"help": "must stay []: mask schedules are refused"})
    mask_dynamic_len: str = field(default="[]", metadata={"help": "must stay []: mask schedules are refused"})
    mask_channel_length: int = field(default=10, metadata={"help": "channel mask span"})
    mask_channel_prob: float = field(default=0.0, metadata={"help": "channel masking probability"})
    mask_channel_selection: MASKING_DISTRIBUTION_CHOICES = field(default="static", metadata={"help": "channel span law"})
    mask_channel_other: float = field(default=0, metadata={"help": "secondary channel-span argument"})
    no_mask_channel_overlap: bool = field(default=False, metadata={"help": "forbid overlapping channel spans"})
    mask_channel_min_space: int = field(default=1, metadata={"help": "min gap between channel spans"})

    # --- musical teacher (CQT) and mel reconstruction ---
    audio_cqt_loss_m: bool = field(default=False, metadata={"help": "regress the clean-audio CQT at masked frames"})
    audio_cqt_bins: int = field(default=84, metadata={"help": "CQT bins (7 octaves from 32.7 Hz)"})
    cqt_align_to_cnn: bool = field(
        default=False,
        metadata={"help": "centre CQT frame j on CNN frame j (sample 320j+200) instead of 320j (original)"},
    )
    audio_mel_loss_m: bool = field(default=False, metadata={"help": "regress the clean-audio log-mel at masked frames"})
    audio_mel_bins: int = field(default=84, metadata={"help": "mel bins"})

    # --- in-batch noise mixture (training only) ---
    mixture_prob: float = field(
        default=-1.0, metadata={"help": "probability that a training sample gets in-batch noise mixed in (<= 0: off)"}
    )
    inbatch_noise_augment_len_range: str = field(
        default="[8000, 24000]", metadata={"help": "[min, max] samples of each noise segment"}
    )
    inbatch_noise_augment_number_range: str = field(
        default="[1, 3]", metadata={"help": "[min, max] noise segments per augmented sample"}
    )
    inbatch_noise_augment_volume: float = field(default=1.0, metadata={"help": "gain of the added segments"})

    pretrained_weights: str = field(
        default="", metadata={"help": "checkpoint whose feature_extractor.* weights initialise the CNN"}
    )
