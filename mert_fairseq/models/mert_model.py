"""The MERT model: CNN front end -> masking -> transformer encoder -> masked prediction of discrete
teacher codes (8 EnCodec codebooks or K-means clusters) + CQT reconstruction.

Data flow for a batch (B clips of L samples at 24 kHz, T = CNN frames at 75 Hz, D = width):
  source B x L --(training: in-batch noise mixture)--> CNN B x 512 x T --> LayerNorm, proj B x T x D
  --> mask spans with `mask_emb` --> encoder B x T x D --> per codebook k: projections K x B x T x F, cosine
  logits against every class at every frame (`frame_logits`, K x B*T x C, for the `mert` criterion, which
  weights them by the mask); CQT head vs. the CQT of the CLEAN audio, averaged over the masked frames.
The step's random draws (masks, mixture, layerdrop, random codebooks) come in as one `StepDraws` made by the
collater (`data/step_draws.py`); the model draws nothing, so a training step runs on fixed shapes with no host
synchronisation.
State-dict keys are those of the original MERT (see tests/test_checkpoint_compat.py).
"""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.data.dictionary import Dictionary
from fairseq.models import BaseFairseqModel, register_model
from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel
from fairseq.modules import GradMultiply
from omegaconf import OmegaConf
from torch import nn

from mert_fairseq.checkpoint.safe_load import load_checkpoint_state
from mert_fairseq.common.config_values import parse_conv_layers, parse_list_literal, warn_fields_without_effect
from mert_fairseq.models.teachers.cqt import CQTTeacher, build_cqt, cqt_frames
from mert_fairseq.data.step_draws import DrawSpec, StepDraws, frame_padding
from mert_fairseq.models.masked_prediction import batched_cosine_logits
from mert_fairseq.models.teachers.mel import MelTeacher
from mert_fairseq.models.mert_config import NO_EFFECT_FIELDS, MERTConfig
from mert_fairseq.models.noise_mixture import apply_noise_mixture
from mert_fairseq.models.teachers.random_projection import build_online_targets
from mert_fairseq.models.transformer_encoder import TransformerEncoder

logger = logging.getLogger(__name__)

# The original's mask schedules (lists by update); refused when set: the loader draws masks, unaware of the update.
MASK_SCHEDULE_FIELDS = ("mask_dynamic_prob_step", "mask_dynamic_prob", "mask_dynamic_len_step", "mask_dynamic_len")
# Buffers the original stored in checkpoints; rebuilt here at construction, dropped on load.
_RECOMPUTED_BUFFER_SUFFIXES = ("cqt_kernels_real", "cqt_kernels_imag", "lenghts", "spectrogram.window", "mel_scale.fb")


@register_model("mert", dataclass=MERTConfig)
class MERTModel(BaseFairseqModel):
    def __init__(self, cfg: MERTConfig, task_cfg, dictionaries: List[Optional[Dictionary]]) -> None:
        super().__init__()
        self.cfg = cfg
        # plain copy of the config for the forward path (torch.compile traces attribute reads of it; DictConfig's
        # own attribute machinery would break the graph)
        self.opts = SimpleNamespace(**(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
                                       if OmegaConf.is_config(cfg) else vars(cfg)))
        self._warn_no_effect_fields(cfg)
        sample_rate = int(task_cfg.sample_rate)
        conv_layers = parse_conv_layers(cfg.conv_feature_layers)
        self.feature_extractor = ConvFeatureExtractionModel(
            conv_layers=conv_layers, dropout=0.0, mode=cfg.extractor_mode, conv_bias=cfg.conv_bias
        )
        self.conv_layers = tuple(tuple(int(v) for v in layer) for layer in conv_layers)
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

        for name in MASK_SCHEDULE_FIELDS:
            if parse_list_literal(getattr(cfg, name, None), f"model.{name}"):
                raise ValueError(f"model.{name}={getattr(cfg, name)!r}: mask schedules are not supported (the data "
                                 "loader draws the masks and does not know the update; no original MERT recipe "
                                 "uses one): set a fixed model.mask_prob / model.mask_length")
        self.noise_length_range = parse_list_literal(cfg.inbatch_noise_augment_len_range,
                                                     "model.inbatch_noise_augment_len_range")
        self.noise_count_range = parse_list_literal(cfg.inbatch_noise_augment_number_range,
                                                    "model.inbatch_noise_augment_number_range")
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
        warn_fields_without_effect(cfg, NO_EFFECT_FIELDS, "model")
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
        if self.opts.wav_normalize:
            source = F.layer_norm(source, source.shape[-1:])
        if self.opts.feature_grad_mult > 0:
            features = self.feature_extractor(source)
            if self.opts.feature_grad_mult != 1.0:
                features = GradMultiply.apply(features, self.opts.feature_grad_mult)
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
        return frame_padding(padding_mask, features.size(1))

    # ------------------------------------------------------------------ random draws
    def draw_spec(self) -> DrawSpec:
        """What a step draws for this model (`data/step_draws.py`)."""
        c = self.opts
        online = getattr(self, "online_targets", None)
        return DrawSpec(
            conv_layers=self.conv_layers, feat2tar_ratio=self.feat2tar_ratio, mask_prob=c.mask_prob,
            mask_length=c.mask_length, mask_selection=c.mask_selection, mask_other=c.mask_other,
            no_mask_overlap=c.no_mask_overlap, mask_min_space=c.mask_min_space, mask_origin=c.mask_origin,
            mask_replace=c.mask_replace, mask_replace_type=c.mask_replace_type, mixture_prob=c.mixture_prob,
            noise_length_range=tuple(self.noise_length_range), noise_count_range=tuple(self.noise_count_range),
            layerdrop=c.encoder_layerdrop, n_layers=c.encoder_layers, random_codebook=c.random_codebook,
            n_streams=len(self.num_classes), mask_channel_prob=c.mask_channel_prob,
            mask_channel_length=c.mask_channel_length, mask_channel_selection=c.mask_channel_selection,
            mask_channel_other=c.mask_channel_other, no_mask_channel_overlap=c.no_mask_channel_overlap,
            mask_channel_min_space=c.mask_channel_min_space, embed_dim=c.encoder_embed_dim,
            online_label_hop=online.hop if online is not None else 0)

    def _fill_masked(self, x: torch.Tensor, draws: StepDraws) -> torch.Tensor:
        """x: B x T x D. Masked frames get `mask_emb`; BERT-style (`mask_origin`, `mask_replace`), the drawn
        choices say which masked frames keep their own features and which take another frame's (`mask_source`)."""
        emb = self.mask_emb.to(x.dtype)
        if draws.mask_source is None:
            return torch.where(draws.mask.unsqueeze(-1), emb, x)
        B, T, D = x.shape
        x = x.reshape(B * T, D).index_select(0, draws.mask_source.reshape(-1)).view(B, T, D)
        return torch.where(draws.mask_to_emb.unsqueeze(-1), emb, x)

    # ------------------------------------------------------------------ masked prediction
    def _logit_scales(self):
        """1 / logit_temp, or the learned logit scale of each stream (K)."""
        if self.opts.learnable_temp:
            return torch.clamp(self.logit_temp_list.exp(), max=self.opts.learnable_temp_max)
        return 1.0 / self.opts.logit_temp

    def _frame_projections(self, x: torch.Tensor) -> torch.Tensor:
        """B x T x D frames -> K x B x T x F projections, one per label stream."""
        K, (B, T, _) = len(self.num_classes), x.shape
        if self.opts.random_codebook > 0 and self.opts.untie_final_proj:
            return torch.stack([p(x) for p in self.final_projs])
        y = self.final_proj(x)
        if self.opts.untie_final_proj:
            return y.view(B, T, K, -1).permute(2, 0, 1, 3)
        return y.unsqueeze(0).expand(K, -1, -1, -1)

    def _label_embeddings(self) -> List[torch.Tensor]:
        embs = self.target_glu(self.label_embs_concat) if self.target_glu is not None else self.label_embs_concat
        return list(embs.split(self.num_classes, 0))

    def frame_logits(self, net_output) -> torch.Tensor:
        """Every stream's logits at every frame, one batched matmul: K x (B*T) x C fp32 (codebooks of fewer
        than C classes padded with -inf)."""
        proj = net_output["proj"].flatten(1, 2)  # K x N x F
        embs, C = self._label_embeddings(), max(self.num_classes)
        class_valid = None
        if min(self.num_classes) != C:
            sizes = torch.tensor(self.num_classes, device=proj.device)
            class_valid = torch.arange(C, device=proj.device) < sizes[:, None]
            embs = [F.pad(e, (0, 0, 0, C - e.size(0))) for e in embs]
        return batched_cosine_logits(proj, torch.stack(embs), self._logit_scales(), class_valid)

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
        draws: Optional[StepDraws] = None,
    ) -> Dict[str, torch.Tensor]:
        """source: B x L waveform; target_list: per stream B x T_label dictionary indices.
        `output_layer` is 1-based (fairseq convention). `draws`: the step's random draws (span masks, noise
        mixture, layerdrop, random codebooks), made by `step_draws.draw_for_batch` (the collater's
        `net_input["draws"]`); needed when `mask` is true, else None (nothing random: no mixture, no layerdrop).

        Training output (fixed shapes whatever the draws): `proj` K x B x T x F, `targets` K x B x T,
        `masked` / `unmasked` B x T bool (non-padding frames), `codebook_weight`, `features_pen`, the teacher
        losses over the masked frames.
        """
        if draws is None:
            if mask:
                raise ValueError(
                    "MERTModel.forward(mask=True) needs the step's draws: net_input['draws'] of MERTDataset's "
                    "collater, or mert_fairseq.data.step_draws.draw_for_batch(model.draw_spec(), rng, source, "
                    "padding_mask, label_frames); pass mask=False for features")
            draws = StepDraws()
        if not target_list and not features_only and hasattr(self, "online_targets"):
            target_list = self.online_targets(source)  # per codebook B x T_label codes of the clean audio
        clean = source
        if self.training and draws.mix_len is not None:
            source = apply_noise_mixture(source, draws.mix_start, draws.mix_pos, draws.mix_len,
                                         self.opts.inbatch_noise_augment_volume)

        features = self.forward_features(source)  # B x C x T
        if target_list:
            features, target_list = self.forward_targets(features, target_list)
        features_pen = features.float().pow(2).mean()
        features = features.transpose(1, 2)  # B x T x C
        if self.opts.feature_extractor_cqt:
            cqt = cqt_frames(self.feature_extractor_cqt, source)[:, : features.size(1)]
            features = torch.cat([features, cqt.to(features.dtype)], dim=2)
        features = self.layer_norm(features)
        B, T = features.shape[:2]
        if padding_mask is not None:
            padding_mask = frame_padding(padding_mask, T)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
            if self.post_proj_layer_norm is not None:
                features = self.post_proj_layer_norm(features)
        features = self.dropout_input(features)  # B x T x D

        # all-False padding (cropped batches) acts as none: attention without a mask (a sync, padded batches only)
        pad = padding_mask if padding_mask is not None and bool(padding_mask.any()) else None
        span = draws.mask if mask else None
        if span is not None and tuple(span.shape) != (B, T):
            raise ValueError(f"net_input draws: span mask of shape {tuple(span.shape)} for {B} x {T} model frames "
                             "(drawn for another CNN or crop?)")
        x = features if span is None else self._fill_masked(features, draws)
        if mask and draws.channel_mask is not None:
            x = x.masked_fill(draws.channel_mask.unsqueeze(1), 0.0)
        x, hidden_states = self.encoder(
            x, pad, tgt_layer=None if output_layer is None else output_layer - 1,
            return_hidden_states=return_hidden_states,
            layer_keep=draws.layer_keep if self.training else None,
            layer_keep_host=draws.layer_keep_host if self.training else None,
        )
        if features_only:
            return {"x": x, "padding_mask": padding_mask, "features": features, "hidden_states": hidden_states}

        masked = span if span is not None else torch.zeros((B, T), dtype=torch.bool, device=x.device)
        if pad is not None:
            masked = masked & ~pad
        unmasked = ~masked if pad is None else ~pad & ~masked
        result = {
            "proj": self._frame_projections(x) if target_list else None,
            "targets": torch.stack(target_list) if target_list else None,
            "masked": masked,
            "unmasked": unmasked,
            "codebook_weight": draws.codebook_weight,
            "padding_mask": padding_mask,
            "features_pen": features_pen,
        }
        weight = masked.to(torch.float32)
        teachers = (("cqt_pred_m", "encoder_cqt_model", cqt_labels, self.opts.audio_cqt_loss_m),
                    ("mel_pred_m", "encoder_mel_model", mel_labels, self.opts.audio_mel_loss_m))
        for name, attr, labels, enabled in teachers:
            if not enabled:
                continue
            teacher = getattr(self, attr)
            target = labels[:, :T] if labels is not None else teacher.targets(clean, T)
            # mean squared error over the masked frames, as a weighted sum over all B x T (fixed shapes)
            result[name] = (teacher.frame_errors(x, target) * weight).sum() / weight.sum().clamp(min=1.0)
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
    def get_extra_losses(self, net_output):
        names = [n for n in ("features_pen", "cqt_pred_m", "mel_pred_m") if n in net_output]
        return [net_output[n] for n in names], names

    def remove_pretraining_modules(self) -> None:
        self.target_glu = None
        self.final_proj = None
