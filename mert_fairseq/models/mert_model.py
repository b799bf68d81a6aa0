"""The MERT model: CNN front end -> masking -> transformer encoder -> masked prediction of discrete
teacher codes (8 EnCodec codebooks or K-means clusters) + CQT reconstruction.

Data flow for a batch (B clips of L samples at 24 kHz, T = CNN frames at 75 Hz, D = width):
  source B x L --(training: in-batch noise mixture)--> CNN B x 512 x T --> LayerNorm, proj B x T x D
  --> mask spans with `mask_emb` --> encoder B x T x D --> per codebook k: cosine logits S x (1 + C_k)
  on the S masked frames; CQT head on the same frames vs. the CQT of the CLEAN audio.
State-dict keys are those of the original MERT (see tests/test_checkpoint_compat.py).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.data.data_utils import compute_mask_indices, numpy_seed
from fairseq.data.dictionary import Dictionary
from fairseq.models import BaseFairseqModel, register_model
from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel
from fairseq.modules import GradMultiply
from torch import nn

from mert_fairseq.checkpoint.safe_load import load_checkpoint_state
from mert_fairseq.common.config_values import parse_conv_layers, parse_list_literal, warn_fields_without_effect
from mert_fairseq.models.teachers.cqt import CQTTeacher, build_cqt, cqt_frames
from mert_fairseq.models.masked_prediction import cosine_logits
from mert_fairseq.models.teachers.mel import MelTeacher
from mert_fairseq.models.mert_config import NO_EFFECT_FIELDS, MERTConfig
from mert_fairseq.models.noise_mixture import mix_in_batch_noise
from mert_fairseq.models.teachers.random_projection import build_online_targets
from mert_fairseq.models.transformer_encoder import TransformerEncoder

logger = logging.getLogger(__name__)

# Buffers the original stored in checkpoints; rebuilt here at construction, dropped on load.
_RECOMPUTED_BUFFER_SUFFIXES = ("cqt_kernels_real", "cqt_kernels_imag", "lenghts", "spectrogram.window", "mel_scale.fb")


def stage_value(steps: List[int], values: list, num_updates: int):
    """Piecewise-constant schedule: values[i] holds from steps[i-1] (inclusive) to steps[i]."""
    return values[sum(num_updates >= s for s in steps)]


def select_frames(t: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Frames of a B x T (x ...) tensor, in row-major order: `where` is a B x T bool mask or flat B*T
    positions (long). Same values and gradients either way."""
    if where.dtype == torch.bool:
        return t[where]
    return t.flatten(0, 1).index_select(0, where)


@register_model("mert", dataclass=MERTConfig)
class MERTModel(BaseFairseqModel):
    def __init__(self, cfg: MERTConfig, task_cfg, dictionaries: List[Optional[Dictionary]]) -> None:
        super().__init__()
        self.cfg = cfg
        self._warn_no_effect_fields(cfg)
        sample_rate = int(task_cfg.sample_rate)
        conv_layers = parse_conv_layers(cfg.conv_feature_layers)
        self.feature_extractor = ConvFeatureExtractionModel(
            conv_layers=conv_layers, dropout=0.0, mode=cfg.extractor_mode, conv_bias=cfg.conv_bias
        )
        self.cnn_stride = int(np.prod([s for _, _, s in conv_layers]))
        self.feat2tar_ratio = cfg.label_rate * self.cnn_stride / sample_rate
        embed = conv_layers[-1][0]
        if cfg.feature_extractor_cqt:  # extra input features, one CQT frame per CNN frame
            self.feature_extractor_cqt = build_cqt(sample_rate, self.cnn_stride, cfg.feature_extractor_cqt_bins)
            embed += cfg.feature_extractor_cqt_bins
        D = cfg.encoder_embed_dim
        stable = cfg.do_cnn_feat_stable_layernorm
        self.layer_norm = nn.LayerNorm(embed, elementwise_affine=not stable)
        self.post_extract_proj = nn.Linear(embed, D) if embed != D else None
        self.post_proj_layer_norm = (
            nn.LayerNorm(D, elementwise_affine=False) if stable and self.post_extract_proj is not None else None
        )
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(D).uniform_())
        self.encoder = TransformerEncoder(cfg)

        final_dim = cfg.final_dim if cfg.final_dim > 0 else D
        n_streams = len(dictionaries)
        self.target_glu = nn.Sequential(nn.Linear(final_dim, final_dim * 2), nn.GLU()) if cfg.target_glu else None
        if cfg.random_codebook > 0:
            if cfg.random_codebook > n_streams:
                raise ValueError(f"random_codebook={cfg.random_codebook} > {n_streams} label streams")
            if cfg.untie_final_proj:
                self.final_projs = nn.ModuleList(nn.Linear(D, final_dim) for _ in range(n_streams))
            else:
                self.final_proj = nn.Linear(D, final_dim)
        else:
            self.final_proj = nn.Linear(D, final_dim * (n_streams if cfg.untie_final_proj else 1))
        if any(d is None for d in dictionaries):
            self.num_classes: List[int] = []
            logger.info("no dictionaries: building without label embeddings (fine-tuning / feature use)")
        else:
            self.num_classes = [len(d) for d in dictionaries]
            self.label_embs_concat = nn.Parameter(torch.empty(sum(self.num_classes), final_dim).uniform_())
        online = build_online_targets(task_cfg, sample_rate, cfg.label_rate,
                                      offset=dictionaries[0].nspecial if dictionaries and dictionaries[0] else 0)
        if online is not None:  # task.online_targets: codes of the clean audio instead of label files
            self.online_targets = online
        if cfg.learnable_temp:
            self.logit_temp_list = nn.Parameter(torch.full((n_streams,), float(np.log(1 / cfg.learnable_temp_init))))

        if cfg.audio_cqt_loss_m:
            self.encoder_cqt_model = CQTTeacher(
                D, cfg.audio_cqt_bins, sample_rate, cfg.label_rate, cfg.cqt_align_to_cnn,
                cnn_receptive_field=self._receptive_field(conv_layers),
            )
        if cfg.audio_mel_loss_m:
            self.encoder_mel_model = MelTeacher(D, cfg.audio_mel_bins, sample_rate, cfg.label_rate)

        self.mask_prob, self.mask_length = cfg.mask_prob, cfg.mask_length
        self._prob_schedule = tuple(parse_list_literal(getattr(cfg, f), f"model.{f}")
                                    for f in ("mask_dynamic_prob_step", "mask_dynamic_prob"))
        self._len_schedule = tuple(parse_list_literal(getattr(cfg, f), f"model.{f}")
                                   for f in ("mask_dynamic_len_step", "mask_dynamic_len"))
        for (steps, values), name in ((self._prob_schedule, "prob"), (self._len_schedule, "len")):
            if steps and len(values) != len(steps) + 1:
                raise ValueError(f"mask_dynamic_{name} needs len(mask_dynamic_{name}_step) + 1 values")
        self.noise_length_range = parse_list_literal(cfg.inbatch_noise_augment_len_range,
                                                     "model.inbatch_noise_augment_len_range")
        self.noise_count_range = parse_list_literal(cfg.inbatch_noise_augment_number_range,
                                                    "model.inbatch_noise_augment_number_range")
        self._generator = torch.Generator()  # CPU generator for the training-time random draws
        self.set_num_updates(0)
        if cfg.pretrained_weights:
            self._load_pretrained_cnn(cfg.pretrained_weights)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _receptive_field(conv_layers) -> int:
        field, jump = 1, 1
        for _, k, s in conv_layers:
            field += (k - 1) * jump
            jump *= s
        return field

    @staticmethod
    def _warn_no_effect_fields(cfg: MERTConfig) -> None:
        warn_fields_without_effect(cfg, MERTConfig(), NO_EFFECT_FIELDS, "model")
        if cfg.wav_normalize:
            logger.warning("model.wav_normalize normalises each waveform separately (the original normalised "
                           "the whole batch jointly)")

    def _load_pretrained_cnn(self, path: str) -> None:
        state = load_checkpoint_state(path)["model"]
        cnn = {k[len("feature_extractor."):]: v for k, v in state.items() if k.startswith("feature_extractor.")}
        if not cnn:
            raise ValueError(f"{path}: no feature_extractor.* weights to initialise the CNN from")
        self.feature_extractor.load_state_dict(cnn, strict=True)
        logger.info("initialised the CNN front end from %s (%d tensors)", path, len(cnn))

    @classmethod
    def build_model(cls, cfg: MERTConfig, task) -> "MERTModel":
        return cls(cfg, task.cfg, task.dictionaries)

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates
        self._calls_this_update = 0
        for (steps, values), attr in ((self._prob_schedule, "mask_prob"), (self._len_schedule, "mask_length")):
            if steps:
                setattr(self, attr, stage_value(steps, values, num_updates))

    def upgrade_state_dict_named(self, state_dict: Dict[str, torch.Tensor], name: str) -> Dict[str, torch.Tensor]:
        """Accept original checkpoints: drop stored CQT/mel buffers, map new-style weight norm keys."""
        super().upgrade_state_dict_named(state_dict, name)
        prefix = f"{name}." if name else ""
        for key in list(state_dict):
            if not key.startswith(prefix):
                continue
            if key.endswith(_RECOMPUTED_BUFFER_SUFFIXES):
                del state_dict[key]
            elif ".parametrizations.weight.original" in key:  # torch parametrize weight_norm
                new = key.replace(".parametrizations.weight.original0", ".weight_g").replace(
                    ".parametrizations.weight.original1", ".weight_v")
                state_dict[new] = state_dict.pop(key)
        return state_dict

    # ------------------------------------------------------------------ forward pieces
    def forward_features(self, source: torch.Tensor) -> torch.Tensor:
        """B x L -> CNN features B x C x T (gradient scaled by feature_grad_mult; frozen if <= 0)."""
        if self.cfg.wav_normalize:
            source = F.layer_norm(source, source.shape[-1:])
        if self.cfg.feature_grad_mult > 0:
            features = self.feature_extractor(source)
            if self.cfg.feature_grad_mult != 1.0:
                features = GradMultiply.apply(features, self.cfg.feature_grad_mult)
            return features
        self.feature_extractor.eval()
        with torch.no_grad():
            return self.feature_extractor(source)

    def forward_targets(self, features: torch.Tensor, target_list: List[torch.Tensor]):
        """Crop T so every frame has a label; pick label floor(t * ratio) for frame t."""
        feat_tsz = features.size(2)
        targ_tsz = min(t.size(1) for t in target_list)
        if self.feat2tar_ratio * feat_tsz > targ_tsz:
            feat_tsz = int(targ_tsz / self.feat2tar_ratio)
            features = features[..., :feat_tsz]
        target_inds = (torch.arange(feat_tsz).float() * self.feat2tar_ratio).long().to(features.device, non_blocking=True)
        return features, [t[:, target_inds] for t in target_list]

    @staticmethod
    def forward_padding_mask(features: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Sample-level B x L mask -> frame-level B x T: a frame is padding only if all its samples are."""
        extra = padding_mask.size(1) % features.size(1)
        if extra > 0:
            padding_mask = padding_mask[:, :-extra]
        return padding_mask.view(padding_mask.size(0), features.size(1), -1).all(-1)

    def apply_mask(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]):
        """Span masking of B x T x D frames; returns (x, mask B x T bool or None)."""
        x, mask, _ = self._apply_mask(x, padding_mask)
        return x, mask

    def _apply_mask(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor],
                    padding_host: Optional[torch.Tensor] = None):
        """apply_mask, also returning the span mask as drawn on the host (numpy B x T, or None).
        `padding_host`: a CPU copy of `padding_mask` for the host-side span draws (saves a sync per clip)."""
        B, T, D = x.shape
        mask = mask_np = None
        if self.mask_prob > 0:
            mask_np = compute_mask_indices(
                (B, T), padding_host if padding_host is not None else padding_mask, self.mask_prob, self.mask_length, self.cfg.mask_selection,
                self.cfg.mask_other, min_masks=2, no_overlap=self.cfg.no_mask_overlap,
                min_space=self.cfg.mask_min_space, **self._mask_seed(B),
            )
            mask = torch.from_numpy(mask_np).to(x.device, non_blocking=True)
            x = self._fill_masked(x, mask, padding_mask)
        if self.cfg.mask_channel_prob > 0:
            ch = compute_mask_indices(
                (B, D), None, self.cfg.mask_channel_prob, self.cfg.mask_channel_length,
                self.cfg.mask_channel_selection, self.cfg.mask_channel_other,
                no_overlap=self.cfg.no_mask_channel_overlap, min_space=self.cfg.mask_channel_min_space,
                **self._mask_seed(B, salt=1),
            )
            x = x.masked_fill(torch.from_numpy(ch).to(x.device, non_blocking=True).unsqueeze(1), 0.0)
        return x, mask, mask_np

    def _mask_seed(self, batch_size: int, salt: int = 0) -> dict:
        """fairseq's compute_mask_indices draws from fresh OS entropy unless given (seed, epoch, indices)."""
        seed = int(torch.randint(2**31 - 1, (1,), generator=self._generator))
        return {"seed": seed, "epoch": salt, "indices": torch.arange(batch_size)}

    def _fill_masked(self, x: torch.Tensor, mask: torch.Tensor, padding_mask: Optional[torch.Tensor]):
        """Masked frames get `mask_emb`; BERT-style, a fraction `mask_origin` keeps its own features and a
        fraction `mask_replace` takes the features of a random non-padding frame (same clip or batch)."""
        keep_or_replace = self.cfg.mask_origin + self.cfg.mask_replace
        if keep_or_replace <= 0:
            return torch.where(mask.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        u = torch.rand(mask.shape, generator=self._generator).to(x.device)
        replace = mask & (u >= self.cfg.mask_origin) & (u < keep_or_replace)
        to_emb = mask & (u >= keep_or_replace)
        out = torch.where(to_emb.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        valid = ~padding_mask if padding_mask is not None else torch.ones_like(mask)
        B, T = mask.shape
        for b, t in replace.nonzero().tolist():
            if self.cfg.mask_replace_type == "in_sample":
                src = valid[b].nonzero().flatten()
                out[b, t] = x[b, src[torch.randint(len(src), (1,), generator=self._generator)].item()]
            else:
                src = valid.flatten().nonzero().flatten()
                flat = src[torch.randint(len(src), (1,), generator=self._generator)].item()
                out[b, t] = x[flat // T, flat % T]
        return out

    def _logit_scale(self, k: int):
        if self.cfg.learnable_temp:
            return torch.clamp(self.logit_temp_list[k].exp(), max=self.cfg.learnable_temp_max)
        return 1.0 / self.cfg.logit_temp

    def _projections(self, x: torch.Tensor, n_streams: int) -> List[Optional[torch.Tensor]]:
        """S x D frames -> one S x F projection per label stream (None for unselected random codebooks)."""
        if self.cfg.random_codebook > 0:
            chosen = set(np.random.choice(n_streams, self.cfg.random_codebook, replace=False).tolist())
            proj = (lambda k: self.final_projs[k](x)) if self.cfg.untie_final_proj else (lambda k: self.final_proj(x))
            return [proj(k) if k in chosen else None for k in range(n_streams)]
        y = self.final_proj(x)
        return list(y.chunk(n_streams, dim=-1)) if self.cfg.untie_final_proj else [y] * n_streams

    def compute_logits(self, x: torch.Tensor, targets: List[torch.Tensor]) -> List[Optional[torch.Tensor]]:
        """x: S x D, targets: per stream S dictionary indices -> per stream S x (1 + C_k) logits."""
        label_embs = self.label_embs_concat.split(self.num_classes, 0)
        out = []
        for k, (proj, t) in enumerate(zip(self._projections(x, len(targets)), targets)):
            if proj is None:
                out.append(None)
                continue
            embs = self.target_glu(label_embs[k]) if self.target_glu is not None else label_embs[k]
            out.append(cosine_logits(proj, embs, t, self._logit_scale(k)))
        return out

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        source: torch.Tensor,
        target_list: Optional[List[torch.Tensor]] = None,
        padding_mask: Optional[torch.Tensor] = None,
        cqt_labels: Optional[torch.Tensor] = None,
        mel_labels: Optional[torch.Tensor] = None,
        mask: bool = True,
        features_only: bool = False,
        output_layer: Optional[int] = None,
        return_hidden_states: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """source: B x L waveform; target_list: per stream B x T_label dictionary indices.
        `output_layer` is 1-based (fairseq convention).

        Mask spans, layerdrop, random codebooks and the noise mixture draw from a seed derived from
        fairseq's per-update seed (`torch.initial_seed()` = common.seed + num_updates), the update
        count and the call index within the update, so a resumed run repeats the same draws. (The
        global torch RNG is not used for them: fairseq's prefetch thread consumes it at varying times.)
        """
        self._calls_this_update += 1
        seed = int(np.random.SeedSequence(
            [torch.initial_seed() % 2**63, self.num_updates, self._calls_this_update]).generate_state(1)[0])
        self._generator.manual_seed(seed)
        with numpy_seed(seed):
            return self._forward(source, target_list, padding_mask, cqt_labels, mel_labels, mask,
                                 features_only, output_layer, return_hidden_states)

    def _forward(self, source, target_list, padding_mask, cqt_labels, mel_labels, mask, features_only,
                 output_layer, return_hidden_states) -> Dict[str, torch.Tensor]:
        clean = source
        if self.training and self.cfg.mixture_prob > 0:
            source = mix_in_batch_noise(source, self.cfg.mixture_prob, self.noise_length_range,
                                        self.noise_count_range, self.cfg.inbatch_noise_augment_volume,
                                        generator=self._generator)

        features = self.forward_features(source)  # B x C x T
        if not target_list and not features_only and hasattr(self, "online_targets"):
            target_list = self.online_targets(clean)  # per codebook B x T_label dictionary indices
        if target_list:
            features, target_list = self.forward_targets(features, target_list)
        features_pen = features.float().pow(2).mean()
        features = features.transpose(1, 2)  # B x T x C
        if self.cfg.feature_extractor_cqt:
            cqt = cqt_frames(self.feature_extractor_cqt, source)[:, : features.size(1)]
            features = torch.cat([features, cqt.to(features.dtype)], dim=2)
        features = self.layer_norm(features)
        if padding_mask is not None:
            padding_mask = self.forward_padding_mask(features, padding_mask)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
            if self.post_proj_layer_norm is not None:
                features = self.post_proj_layer_norm(features)
        features = self.dropout_input(features)  # B x T x D

        # One host copy of the frame padding (a sync) instead of one sync per clip in compute_mask_indices;
        # all-False padding (cropped batches) then acts as none: attention without a mask, host-side indices.
        padding_host = padding_mask.cpu() if padding_mask is not None else None
        frame_padding = padding_mask if padding_host is not None and bool(padding_host.any()) else None
        x, mask_indices, mask_host = (self._apply_mask(features, padding_mask, padding_host) if mask
                                      else (features, None, None))
        x, hidden_states = self.encoder(
            x, frame_padding, tgt_layer=None if output_layer is None else output_layer - 1,
            return_hidden_states=return_hidden_states,
        )
        if features_only:
            return {"x": x, "padding_mask": padding_mask, "features": features, "hidden_states": hidden_states}

        B, T = x.shape[:2]
        if frame_padding is None and mask_host is not None:
            # frame positions known on the host: no device sync to count the selected frames
            flat = mask_host.reshape(-1)
            masked = torch.from_numpy(np.flatnonzero(flat)).to(x.device, non_blocking=True)
            unmasked = torch.from_numpy(np.flatnonzero(~flat)).to(x.device, non_blocking=True)
            any_masked = bool(flat.any())
        else:
            valid = ~frame_padding if frame_padding is not None else x.new_ones((B, T), dtype=torch.bool)
            masked = valid & mask_indices if mask_indices is not None else torch.zeros_like(valid)
            unmasked = valid & ~masked
            any_masked = bool(masked.any())
        n_streams = len(target_list)
        result = {
            "logit_m_list": [None] * n_streams if self.cfg.skip_masked
            else self.compute_logits(select_frames(x, masked), [select_frames(t, masked) for t in target_list]),
            "logit_u_list": [None] * n_streams if self.cfg.skip_nomask
            else self.compute_logits(select_frames(x, unmasked), [select_frames(t, unmasked) for t in target_list]),
            "padding_mask": padding_mask,
            "features_pen": features_pen,
        }
        teachers = (("cqt_pred_m", "encoder_cqt_model", cqt_labels, self.cfg.audio_cqt_loss_m),
                    ("mel_pred_m", "encoder_mel_model", mel_labels, self.cfg.audio_mel_loss_m))
        for name, attr, labels, enabled in teachers:
            if not enabled:
                continue
            if not any_masked:  # nothing to reconstruct (e.g. mask_prob=0)
                result[name] = x.new_zeros((), dtype=torch.float32)
                continue
            teacher = getattr(self, attr)
            target = labels[:, :T] if labels is not None else teacher.targets(clean, T)
            result[name] = teacher.loss(select_frames(x, masked), select_frames(target, masked))
        return result

    # ------------------------------------------------------------------ downstream use
    def extract_features(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        mask: bool = False,
        ret_conv: bool = False,
        output_layer: Optional[int] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B x T x D output of `output_layer` (1-based; None = last), frame padding mask)."""
        res = self.forward(source, padding_mask=padding_mask, mask=mask, features_only=True, output_layer=output_layer)
        return (res["features"] if ret_conv else res["x"]), res["padding_mask"]

    def extract_hidden_states(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        """Every layer, as transformers' `output_hidden_states`: encoder_layers + 1 tensors B x T x D."""
        res = self.forward(source, padding_mask=padding_mask, mask=False, features_only=True,
                           return_hidden_states=True)
        return res["hidden_states"], res["padding_mask"]

    # ------------------------------------------------------------------ criterion interface
    def get_logits(self, net_output, is_masked: bool = True) -> List[torch.Tensor]:
        logits = net_output["logit_m_list" if is_masked else "logit_u_list"]
        return [x.float() for x in logits if x is not None]

    def get_targets(self, net_output, is_masked: bool = True) -> List[torch.Tensor]:
        """The target is column 0 of every logits row (original layout)."""
        return [x.new_zeros(x.size(0), dtype=torch.long) for x in self.get_logits(net_output, is_masked)]

    def get_extra_losses(self, net_output):
        names = [n for n in ("features_pen", "cqt_pred_m", "mel_pred_m") if n in net_output]
        return [net_output[n] for n in names], names

    def remove_pretraining_modules(self) -> None:
        self.target_glu = None
        self.final_proj = None
