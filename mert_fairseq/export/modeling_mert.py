"""MERT acoustic music model for Hugging Face transformers (remote code written by mert-fairseq).

Reproduces the encoder of a mert-fairseq / original MERT fairseq checkpoint exactly:

    waveform B x L
      -> CNN feature encoder                      B x C x T   (T = frames, 75 Hz at 24 kHz)
      -> [concatenate a CQT, one frame per CNN frame]  B x T x (C + bins)    (feature_extractor_cqt)
      -> LayerNorm, Linear projection             B x T x D
      -> transformer encoder: convolutional positional embedding, then post-LN layers (MERT 95M),
         post-LN layers with DeepNorm residual scaling, or pre-LN layers (MERT 330M)
      -> BaseModelOutput(last_hidden_state B x T x D, hidden_states: num_hidden_layers + 1 tensors)

Parameter names are those of `transformers.HubertModel`, so one `model.safetensors` serves both.
Only public, long-stable APIs are used (`PreTrainedModel`, `BaseModelOutput`, torch SDPA), so the
file works on transformers 4.x and 5.x. The CQT is the fairseq model's own (`cqt.py`, the very file
`mert_fairseq/models/teachers/cqt.py`, torch and numpy only, copied next to this one): the same frames
(frame j centred on sample hop * j, cut to the CNN's frame count) and the same arithmetic; its kernels are
built on first use, never stored in the weights file. A right-padded batch with its attention mask gives every
clip the hidden states it has alone: the group-norm CNN takes each clip's statistics over its real frames
(`cnn_features.py`, also copied from the package, mert_fairseq/models/cnn_features.py), the CQT sees zeros
after each clip and attention skips padded frames.

`hidden_states` layout (as HuBERT in transformers 4.x and the published MERT models):
  post-LN: [LayerNorm(embeddings + positional conv), output of layer 1, ..., output of layer N]
  pre-LN:  [embeddings + positional conv = input of layer 1, ..., input of layer N,
            final LayerNorm(output of layer N)]
so hidden_states[-1] is always last_hidden_state.
"""
import logging
import math
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_mert import MERTConfig

try:  # the exported folder: cqt.py and cnn_features.py ship next to this file
    from .cnn_features import conv_output_length, masked_group_norm, normalize_waveform, real_lengths
    from .cqt import build_cqt, cqt_frames
except ImportError:  # imported as mert_fairseq.export.modeling_mert: the same files in the package
    from mert_fairseq.models.cnn_features import (conv_output_length, masked_group_norm, normalize_waveform,
                                                  real_lengths)
    from mert_fairseq.models.teachers.cqt import build_cqt, cqt_frames

logger = logging.getLogger(__name__)

# Activation names as in transformers configs ("gelu_new" = the tanh approximation = fairseq "gelu_accurate").
_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "silu": F.silu,
    "swish": F.silu,
    "linear": lambda x: x,
}


def get_activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


# ----------------------------------------------------------------------------------------------------
# CNN feature encoder
# ----------------------------------------------------------------------------------------------------
class MERTConvLayer(nn.Module):
    """Conv1d -> [GroupNorm (block 0 of a "group" encoder) | LayerNorm over channels ("layer")] -> GELU."""

    def __init__(self, config: MERTConfig, layer_id: int):
        super().__init__()
        in_dim = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_dim = config.conv_dim[layer_id]
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size=config.conv_kernel[layer_id],
                              stride=config.conv_stride[layer_id], bias=config.conv_bias)
        self.norm_over_channels = config.feat_extract_norm == "layer"
        if self.norm_over_channels:
            self.layer_norm = nn.LayerNorm(out_dim)
        elif layer_id == 0:
            self.layer_norm = nn.GroupNorm(num_groups=out_dim, num_channels=out_dim, affine=True)
        else:
            self.layer_norm = None
        self.activation = get_activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None):
        """x: B x C_in x L; lengths: real input frames per clip (B) of a padded batch, or None.
        Returns (B x C_out x L', real output frames per clip or None)."""
        x = self.conv(x)
        if lengths is not None:
            lengths = conv_output_length(lengths, self.conv.kernel_size, self.conv.stride)
        if self.layer_norm is not None:
            if self.norm_over_channels:
                x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
            elif lengths is not None:  # GroupNorm over time: each clip's real frames only
                x = masked_group_norm(x, self.layer_norm, lengths)
            else:
                x = self.layer_norm(x)
        return self.activation(x), lengths


class MERTFeatureEncoder(nn.Module):
    def __init__(self, config: MERTConfig):
        super().__init__()
        self.conv_layers = nn.ModuleList(MERTConvLayer(config, i) for i in range(len(config.conv_dim)))

    def forward(self, input_values: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """B x L -> B x C x T; lengths (B): real samples per clip of a right-padded batch (None: all real)."""
        x = input_values[:, None]
        for layer in self.conv_layers:
            x, lengths = layer(x, lengths)
        return x


class MERTFeatureProjection(nn.Module):
    """LayerNorm on the (CNN [+ CQT]) features, then Linear to the transformer width D."""

    def __init__(self, config: MERTConfig):
        super().__init__()
        in_dim = config.conv_dim[-1] + (config.feature_extractor_cqt_bins if config.feature_extractor_cqt else 0)
        self.layer_norm = nn.LayerNorm(in_dim, eps=config.layer_norm_eps) if config.feat_proj_layer_norm else None
        self.projection = nn.Linear(in_dim, config.hidden_size)
        self.post_layer_norm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
                                if config.do_cnn_feat_stable_layernorm else None)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # B x T x C -> B x T x D
        if self.layer_norm is not None:
            features = self.layer_norm(features)
        x = self.projection(features)
        if self.post_layer_norm is not None:
            x = self.post_layer_norm(x)
        return self.dropout(x)


# ----------------------------------------------------------------------------------------------------
# Transformer encoder
# ----------------------------------------------------------------------------------------------------
def _runs_in_cpu_bf16(x: torch.Tensor) -> bool:
    """x is a bf16 CPU tensor, or a CPU tensor under bf16 CPU autocast."""
    if x.device.type != "cpu":
        return False
    return x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                          and torch.get_autocast_dtype("cpu") == torch.bfloat16)


class MERTPositionalConvEmbedding(nn.Module):
    """Grouped Conv1d over time with weight normalisation over the kernel axis (dim 2), 'same' length, GELU."""

    def __init__(self, config: MERTConfig):
        super().__init__()
        k = config.num_conv_pos_embeddings
        conv = nn.Conv1d(config.hidden_size, config.hidden_size, kernel_size=k, padding=k // 2,
                         groups=config.num_conv_pos_embedding_groups)
        weight_norm = getattr(nn.utils.parametrizations, "weight_norm", None) or nn.utils.weight_norm
        self.conv = weight_norm(conv, name="weight", dim=2)
        self.num_pad_remove = 1 if k % 2 == 0 else 0  # an even kernel yields one extra frame
        self.activation = get_activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B x T x D -> B x T x D
        x = x.transpose(1, 2)
        if _runs_in_cpu_bf16(x):
            # oneDNN's bf16 grouped conv1d with an even kernel (torch 2.9) is wrong on AMX CPUs, under autocast
            # too: run it in fp32 there
            conv, bias = self.conv, None if self.conv.bias is None else self.conv.bias.float()
            with torch.autocast("cpu", enabled=False):
                y = nn.functional.conv1d(x.float(), conv.weight.float(), bias, conv.stride, conv.padding,
                                         conv.dilation, conv.groups).to(torch.bfloat16)
        else:
            y = self.conv(x)  # B x D x (T + 1 if even kernel)
        if self.num_pad_remove:
            y = y[:, :, : -self.num_pad_remove]
        return self.activation(y).transpose(1, 2)


class MERTAttention(nn.Module):
    def __init__(self, config: MERTConfig):
        super().__init__()
        d, self.num_heads = config.hidden_size, config.num_attention_heads
        if d % self.num_heads:
            raise ValueError(f"hidden_size {d} is not divisible by num_attention_heads {self.num_heads}")
        self.head_dim = d // self.num_heads
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor], output_attentions: bool = False):
        """x: B x T x D; attn_mask: B x 1 x 1 x T bool (True = attend) or None.
        Returns (B x T x D, attention weights B x H x T x T or None)."""
        b, t, d = x.shape

        def split_heads(y):  # B x T x D -> B x H x T x D/H
            return y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = split_heads(self.q_proj(x)), split_heads(self.k_proj(x)), split_heads(self.v_proj(x))
        dropout = self.dropout if self.training else 0.0
        weights = None
        if output_attentions:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # B x H x T x T
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p=dropout, training=self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d)), weights  # B x T x D


class MERTFeedForward(nn.Module):
    def __init__(self, config: MERTConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = get_activation(config.hidden_act)
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B x T x D -> B x T x D
        x = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class MERTEncoderLayer(nn.Module):
    """post-LN: x = LN(a*x + Attn(x)); x = LN(a*x + FFN(x))   (a = (2N)^(1/4) with DeepNorm, else 1)
    pre-LN:  x = x + Attn(LN(x));    x = x + FFN(LN(x))"""

    def __init__(self, config: MERTConfig):
        super().__init__()
        self.attention = MERTAttention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = MERTFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pre_ln = config.do_stable_layer_norm
        self.residual_scale = (2.0 * config.num_hidden_layers) ** 0.25 if config.deepnorm else 1.0

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor], output_attentions: bool = False):
        if self.pre_ln:
            h, weights = self.attention(self.layer_norm(x), attn_mask, output_attentions)
            x = x + self.dropout(h)
            x = x + self.feed_forward(self.final_layer_norm(x))
        else:
            a = self.residual_scale
            h, weights = self.attention(x, attn_mask, output_attentions)
            x = self.layer_norm(x * a + self.dropout(h))
            x = self.final_layer_norm(x * a + self.feed_forward(x))
        return x, weights


class MERTEncoder(nn.Module):
    def __init__(self, config: MERTConfig):
        super().__init__()
        self.pre_ln = config.do_stable_layer_norm
        self.layerdrop = config.layerdrop
        self.pos_conv_embed = MERTPositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(MERTEncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False  # set by PreTrainedModel.gradient_checkpointing_enable()

    def forward(self, x, frame_mask=None, output_hidden_states=False, output_attentions=False):
        """x: B x T x D; frame_mask: B x T bool (True = real frame) or None."""
        attn_mask = None
        if frame_mask is not None:
            x = x.masked_fill(~frame_mask[..., None], 0.0)  # padded frames must not leak into the conv
            attn_mask = frame_mask[:, None, None, :]  # B x 1 x 1 x T
        x = x + self.pos_conv_embed(x)
        if not self.pre_ln:
            x = self.layer_norm(x)
        x = self.dropout(x)
        hidden_states, attentions = [], []
        for layer in self.layers:
            if output_hidden_states:
                hidden_states.append(x)
            if self.training and self.layerdrop > 0 and torch.rand([]).item() < self.layerdrop:
                continue
            if self.gradient_checkpointing and self.training:  # recompute the layer in the backward pass
                x, weights = self._gradient_checkpointing_func(layer.__call__, x, attn_mask, output_attentions)
            else:
                x, weights = layer(x, attn_mask, output_attentions)
            if output_attentions:
                attentions.append(weights)
        if self.pre_ln:
            x = self.layer_norm(x)
        if output_hidden_states:
            hidden_states.append(x)
        return x, hidden_states, attentions


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------
class MERTPreTrainedModel(PreTrainedModel):
    config_class = MERTConfig
    base_model_prefix = "mert"
    main_input_name = "input_values"
    supports_gradient_checkpointing = True

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d) and not hasattr(module, "parametrizations"):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def _get_feat_extract_output_lengths(self, input_lengths):
        """Number of frames the CNN produces from `input_lengths` samples (int or LongTensor)."""
        return conv_output_length(input_lengths, self.config.conv_kernel, self.config.conv_stride)

    def _get_feature_vector_attention_mask(self, num_frames: int, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sample-level B x L mask (1 = real sample, right padding) -> frame-level B x T bool mask: a frame is
        real when all the samples of its receptive field are."""
        lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1).long())
        return torch.arange(num_frames, device=attention_mask.device)[None, :] < lengths[:, None]


class MERTModel(MERTPreTrainedModel):
    def __init__(self, config: MERTConfig):
        super().__init__(config)
        self.config = config
        self.feature_extractor = MERTFeatureEncoder(config)
        if config.feature_extractor_cqt:
            self.feature_extractor_cqt = build_cqt(
                config.sample_rate, int(np.prod(config.conv_stride)), config.feature_extractor_cqt_bins)
        else:
            self.feature_extractor_cqt = None
        self.feature_projection = MERTFeatureProjection(config)
        if config.mask_time_prob > 0.0:
            self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        self.encoder = MERTEncoder(config)
        self.post_init()

    def _warn_if_padded(self, input_values: torch.Tensor) -> None:
        """A batch of several clips without an attention mask where some clips, not all, end in at least one
        CNN hop of exact zeros looks zero-padded: warn (the padding would change those clips' features)."""
        hop = int(np.prod(self.config.conv_stride))
        if input_values.shape[0] < 2 or input_values.shape[1] < hop:
            return
        silent_tail = (input_values[:, -hop:] == 0).all(-1)
        if bool(silent_tail.any()) and not bool(silent_tail.all()):
            logger.warning(
                "MERTModel: %d of %d clips end in %d+ zero samples and no attention_mask was given; if the batch "
                "is padded, pass the feature extractor's attention_mask (padding=True returns it) or the padded "
                "clips' features are wrong", int(silent_tail.sum()), input_values.shape[0], hop)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        mask_time_indices: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[Tuple, BaseModelOutput]:
        """input_values: B x L waveform at config.sample_rate (as prepared by the feature extractor).
        attention_mask: B x L (1 = real sample), right padding, as the feature extractor returns it: every
        clip's real frames then equal those of the clip alone (the group-norm CNN takes each clip's statistics
        over its real frames, the CQT sees zeros, attention skips padded frames); padded frames are undefined.
        mask_time_indices: B x T bool, frames to replace by the learned mask embedding."""
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = getattr(cfg, "return_dict", True) if return_dict is None else return_dict

        padding_mask = lengths = None
        if attention_mask is not None and not bool(attention_mask.all()):
            padding_mask = ~attention_mask.bool()  # B x L, True = padding
            lengths = real_lengths(padding_mask)
        elif attention_mask is None:
            self._warn_if_padded(input_values)
        # as fairseq: wav_normalize applies to the CNN input only, the CQT sees the waveform as given
        cnn_input = normalize_waveform(input_values, lengths) if cfg.wav_normalize else input_values
        features = self.feature_extractor(cnn_input, lengths).transpose(1, 2)  # B x T x C
        if self.feature_extractor_cqt is not None:
            cqt = cqt_frames(self.feature_extractor_cqt, input_values, padding_mask=padding_mask)  # B x T' x bins
            features = torch.cat([features, cqt[:, : features.shape[1]].to(features.dtype)], dim=2)
        frame_mask = None
        if lengths is not None:
            frame_mask = self._get_feature_vector_attention_mask(features.shape[1], attention_mask)
        x = self.feature_projection(features)  # B x T x D
        if mask_time_indices is not None:
            x = torch.where(mask_time_indices[..., None], self.masked_spec_embed.to(x.dtype), x)

        x, hidden_states, attentions = self.encoder(x, frame_mask, output_hidden_states, output_attentions)
        hidden_states = tuple(hidden_states) if output_hidden_states else None
        attentions = tuple(attentions) if output_attentions else None
        if not return_dict:
            return tuple(v for v in (x, hidden_states, attentions) if v is not None)
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden_states, attentions=attentions)
