"""The MERT transformer encoder: convolutional positional embedding + post-LN (95M) or pre-LN
(330M) layers, with optional DeepNorm residual scaling.

Parameter names match fairseq's wav2vec2 `TransformerEncoder` exactly (`pos_conv.0.weight_g`,
`layers.N.self_attn.q_proj`, `layers.N.fc1`, ...), so original MERT checkpoints load. Attention runs
through `torch.nn.functional.scaled_dot_product_attention` (fused flash / memory-efficient kernels
on GPU). Shapes: B batch, T frames, D model width.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fairseq import utils
from torch import nn
from torch.utils.checkpoint import checkpoint


class WeightNormConv1d(nn.Conv1d):
    """Conv1d with weight normalisation over every dim except the kernel axis (dim 2).

    Stores `weight_g` [1, 1, K] and `weight_v` [out, in/groups, K] like the classic
    `torch.nn.utils.weight_norm(conv, dim=2)` that fairseq uses, without its deprecation.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        v = self.weight.detach()
        del self.weight
        self.weight_v = nn.Parameter(v.clone())
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))

    def reset_weight_norm(self) -> None:
        """Recompute g = ||v|| (after re-initialising v)."""
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.weight_v
        weight = v * (self.weight_g / v.norm(dim=(0, 1), keepdim=True))
        if runs_in_cpu_bf16(x):
            # torch 2.9's oneDNN bf16 grouped conv1d with an even kernel is wrong on AMX CPUs (error ~ the output),
            # under autocast too: run it in fp32 there (a dtype switch, so a compiled step keeps one graph)
            bias = None if self.bias is None else self.bias.float()
            with torch.autocast("cpu", enabled=False):
                return self._conv_forward(x.float(), weight.float(), bias).to(torch.bfloat16)
        return self._conv_forward(x, weight, self.bias)


def runs_in_cpu_bf16(x: torch.Tensor) -> bool:
    """x is a bf16 CPU tensor, or a CPU tensor under bf16 CPU autocast (where a conv would run in bf16)."""
    if x.device.type != "cpu":
        return False
    return x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                          and torch.get_autocast_dtype("cpu") == torch.bfloat16)


class SamePad(nn.Module):
    """Drop the extra frame an even-width 'same' convolution produces."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


def make_pos_conv(dim: int, kernel: int, groups: int) -> nn.Sequential:
    conv = WeightNormConv1d(dim, dim, kernel_size=kernel, padding=kernel // 2, groups=groups)
    nn.init.normal_(conv.weight_v, mean=0.0, std=math.sqrt(4.0 / (kernel * dim)))
    nn.init.constant_(conv.bias, 0.0)
    conv.reset_weight_norm()
    return nn.Sequential(conv, SamePad(kernel), nn.GELU())


class SelfAttention(nn.Module):
    """Multi-head self-attention with fairseq's parameter names, computed by SDPA."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"embed dim {dim} not divisible by {num_heads} heads"
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        B, T, D = x.shape
        H = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # B x T x D -> B x H x T x D/H
            return t.view(B, T, H, D // H).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        # No mask (None) lets SDPA pick the flash kernel on GPU; the encoder passes None when nothing is padded.
        attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # B x 1 x 1 x T
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # B x H x T x D/H
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class EncoderLayer(nn.Module):
    """One transformer block; post-LN (LayerNorm after each residual) or pre-LN."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        activation_fn: str,
        layer_norm_first: bool,
        residual_alpha: float = 1.0,
    ) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation_fn: Callable = utils.get_activation_fn(activation_fn)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(activation_dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.layer_norm_first = layer_norm_first
        self.residual_alpha = residual_alpha  # DeepNorm: residual * alpha + f(x)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.fc2(self.dropout2(self.activation_fn(self.fc1(x)))))

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        a = self.residual_alpha
        if self.layer_norm_first:
            x = x * a + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), padding_mask))
            return x * a + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * a + self.dropout1(self.self_attn(x, padding_mask)))
        return self.final_layer_norm(x * a + self._ffn(x))


def zero_weighted_sum(module: nn.Module) -> torch.Tensor:
    """0 * (sum of every weight of `module`): a scalar 0 that gives each weight a zero gradient (a skipped
    layer's weights then take part in the backward as DDP's reducer expects, at the cost of one sum each)."""
    return torch.stack([p.sum(dtype=torch.float32) for p in module.parameters()]).sum() * 0.0


def init_bert_params(module: nn.Module) -> None:
    """BERT-style init used by fairseq's wav2vec2 encoder: N(0, 0.02) weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class TransformerEncoder(nn.Module):
    def __init__(self, cfg) -> None:  # cfg: MERTConfig
        super().__init__()
        if cfg.layer_type != "transformer":
            raise NotImplementedError(f"layer_type={cfg.layer_type!r}: only 'transformer' layers are implemented")
        if cfg.pos_conv_depth != 1:
            raise NotImplementedError(f"pos_conv_depth={cfg.pos_conv_depth}: only depth 1 is implemented")
        if cfg.deepnorm and cfg.layer_norm_first:
            raise ValueError("deepnorm requires a post-LN encoder (layer_norm_first=false)")
        D, N = cfg.encoder_embed_dim, cfg.encoder_layers
        self.dropout = cfg.dropout
        self.layerdrop = cfg.encoder_layerdrop
        self.layer_norm_first = cfg.layer_norm_first
        self.required_seq_len_multiple = cfg.required_seq_len_multiple
        self.checkpoint_activations = cfg.checkpoint_activations
        # eager steps skip a dropped layer (its weights get a zero gradient); False computes it and discards it
        # (FSDP: every rank must gather every layer in the same order). Compiled steps always discard.
        self.skip_dropped_layers = True
        self.pos_conv = make_pos_conv(D, cfg.conv_pos, cfg.conv_pos_groups)
        alpha = (2.0 * N) ** 0.25 if cfg.deepnorm else 1.0
        self.layers = nn.ModuleList(
            EncoderLayer(
                D, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads, cfg.dropout, cfg.attention_dropout,
                cfg.activation_dropout, cfg.activation_fn, cfg.layer_norm_first, alpha,
            )
            for _ in range(N)
        )
        self.layer_norm = nn.LayerNorm(D)
        self.apply(init_bert_params)
        if cfg.deepnorm:  # DeepNet init: shrink the residual-branch weights by (8N)^(1/4)
            beta = (8.0 * N) ** 0.25
            for name, p in self.layers.named_parameters():
                if any(k in name for k in ("fc1", "fc2", "out_proj", "v_proj")):
                    p.data.div_(beta)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        tgt_layer: Optional[int] = None,
        return_hidden_states: bool = False,
        layer_keep: Optional[torch.Tensor] = None,
        layer_keep_host: Optional[Sequence[bool]] = None,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """x: B x T x D -> (B x T x D, hidden states).

        `layer_keep` (N bools, drawn before the step: `data/step_draws.py`) is layerdrop: a layer whose flag is
        False passes its input through, and its weights get a zero gradient (so c10d DDP needs no
        `find_unused_parameters`). Compiled (or `skip_dropped_layers=False`): the layer runs and `torch.where`
        discards it, one graph whatever the draw. Eager, with the host copy `layer_keep_host`: the layer is
        skipped (no host sync; the zero gradient comes from a zero-weighted sum of its weights).

        `tgt_layer` (0-based) stops after that layer and returns its output. `hidden_states` follows
        the transformers HuBERT layout: post-LN: [embeddings after LayerNorm, layer 1..N outputs];
        pre-LN: [input of layer 1..N, final LayerNorm(output)], i.e. N+1 tensors.
        """
        if padding_mask is not None and not padding_mask.any():  # one host sync here instead of one per layer
            padding_mask = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)

        T = x.size(1)
        pad = (-T) % self.required_seq_len_multiple
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
            if padding_mask is None:
                padding_mask = x.new_zeros(x.shape[:2], dtype=torch.bool)
                padding_mask[:, T:] = True
            else:
                padding_mask = F.pad(padding_mask, (0, pad), value=True)

        x = F.dropout(x, p=self.dropout, training=self.training)
        hidden: List[torch.Tensor] = []
        skip = (layer_keep_host is not None and self.skip_dropped_layers
                and not torch.compiler.is_compiling())
        for i, layer in enumerate(self.layers):
            if return_hidden_states:
                hidden.append(x[:, :T])
            if skip and not layer_keep_host[i]:
                x = x + zero_weighted_sum(layer).to(x.dtype)
            else:
                if self.checkpoint_activations and self.training:
                    y = checkpoint(layer, x, padding_mask, use_reentrant=False)
                else:
                    y = layer(x, padding_mask)
                x = y if layer_keep is None or skip else torch.where(layer_keep[i], y, x)
            if i == tgt_layer:
                return x[:, :T], hidden
        x = x[:, :T]
        if self.layer_norm_first:
            x = self.layer_norm(x)
        if return_hidden_states:
            hidden.append(x)
        return x, hidden
