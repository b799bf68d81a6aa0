"""The MERT model: CNN front end -> masking -> transformer encoder -> masked prediction of discrete
teacher codes (8 EnCodec codebooks or K-means clusters) + CQT reconstruction.

Data flow for a batch (B clips of L samples at 24 kHz, T = CNN frames at 75 Hz, D = width):
  source B x L --(training: in-batch noise mixture)--> CNN B x 512 x T --> LayerNorm, proj B x T x D
  --> mask spans with `mask_emb` --> encoder B x T x D --> per codebook k: projections K x B x T x F, cosine
  logits against every class (`frame_logits`, the `mert` criterion: all frames, weighted by the mask; or the
  original S x (1 + C_k) layout on the S masked frames, `get_logits`, fairseq's `hubert` criterion); CQT head
  vs. the CQT of the CLEAN audio, averaged over the masked frames.
The step's random draws (masks, mixture, layerdrop, random codebooks) come from the collater
(`data/step_draws.py`), so a training step runs on fixed shapes with no host synchronisation.
State-dict keys are those of the original MERT (see tests/test_checkpoint_compat.py).
"""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.data.data_utils import compute_mask_indices
from fairseq.data.dictionary import Dictionary
from fairseq.models import BaseFairseqModel, register_model
from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel
from fairseq.modules import GradMultiply
from omegaconf import OmegaConf
from torch import nn

from mert_fairseq.checkpoint.safe_load import load_checkpoint_state
from mert_fairseq.common.config_values import parse_conv_layers, parse_list_literal, warn_fields_without_effect
from mert_fairseq.models.cnn_features import cnn_features, frame_padding_mask
from mert_fairseq.models.teachers.cqt import CQTTeacher, build_cqt, cqt_frames
from mert_fairseq.data.step_draws import DrawSpec, draw_step, frame_padding, model_frames
from mert_fairseq.models.masked_prediction import batched_cosine_logits, cosine_logits
from mert_fairseq.models.teachers.mel import MelTeacher
from mert_fairseq.models.mert_config import NO_EFFECT_FIELDS, MERTConfig
from mert_fairseq.models.noise_mixture import apply_noise_mixture
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
    def forward_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """B x L -> CNN features B x C x T (gradient scaled by feature_grad_mult; frozen if <= 0); a padded
        clip's real frames as if it ran alone (`cnn_features`)."""
        if self.opts.feature_grad_mult > 0:
            features = cnn_features(self.feature_extractor, source, padding_mask, self.opts.wav_normalize)
            if self.opts.feature_grad_mult != 1.0:
                features = GradMultiply.apply(features, self.opts.feature_grad_mult)
            return features
        self.feature_extractor.eval()
        with torch.no_grad():
            return cnn_features(self.feature_extractor, source, padding_mask, self.opts.wav_normalize)

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
        """What a step draws (at the current mask schedule): `data/step_draws.py`."""
        c = self.opts
        return DrawSpec(
            conv_layers=self.conv_layers, feat2tar_ratio=self.feat2tar_ratio, mask_prob=self.mask_prob,
            mask_length=self.mask_length, mask_selection=c.mask_selection, mask_other=c.mask_other,
            no_mask_overlap=c.no_mask_overlap, mask_min_space=c.mask_min_space, mask_origin=c.mask_origin,
            mask_replace=c.mask_replace, mask_replace_type=c.mask_replace_type, mixture_prob=c.mixture_prob,
            noise_length_range=tuple(self.noise_length_range), noise_count_range=tuple(self.noise_count_range),
            layerdrop=c.encoder_layerdrop, n_layers=c.encoder_layers, random_codebook=c.random_codebook,
            n_streams=len(self.num_classes))

    @property
    def has_mask_schedule(self) -> bool:
        """mask_dynamic_*: the span-mask law changes with the update count, which loader workers do not know."""
        return bool(self._prob_schedule[0] or self._len_schedule[0])

    def _draw_here(self, source: torch.Tensor, target_list, padding_mask, mask: bool):
        """The step's draws when the batch brings none (direct calls): seeded from fairseq's per-update seed
        (`torch.initial_seed()` = common.seed + num_updates), the update, the call index within the update and
        the rank (so ranks differ), with the collater's function."""
        spec = self.draw_spec()
        if not ((mask and spec.mask_prob > 0) or spec.random_codebook > 0
                or (self.training and (spec.mixture_prob > 0 or spec.layerdrop > 0))):
            return {}, {}
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        rng = np.random.default_rng([torch.initial_seed() % 2**63, self.num_updates, self._calls_this_update, rank])
        B, L = source.shape
        T = model_frames(spec, L, min(t.size(1) for t in target_list) if target_list else None)
        pad = frame_padding(padding_mask.cpu(), T).numpy() if padding_mask is not None else None
        draws, counts = draw_step(spec, rng, B, L, T, pad, span_masks=mask)
        return {k: v.to(source.device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in draws.items()}, counts

    def _channel_mask(self, x: torch.Tensor) -> torch.Tensor:
        """mask_channel_prob: zero random feature channels (drawn here, on the host; not in the recipes)."""
        B, _, D = x.shape
        seed = int(np.random.SeedSequence([torch.initial_seed() % 2**63, self.num_updates,
                                           self._calls_this_update, 1]).generate_state(1)[0])
        ch = compute_mask_indices(
            (B, D), None, self.opts.mask_channel_prob, self.opts.mask_channel_length,
            self.opts.mask_channel_selection, self.opts.mask_channel_other,
            no_overlap=self.opts.no_mask_channel_overlap, min_space=self.opts.mask_channel_min_space,
            seed=seed, epoch=1, indices=torch.arange(B),
        )
        return x.masked_fill(torch.from_numpy(ch).to(x.device, non_blocking=True).unsqueeze(1), 0.0)

    def _fill_masked(self, x: torch.Tensor, mask: torch.Tensor, draws: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Masked frames get `mask_emb`; BERT-style (`mask_origin`, `mask_replace`), the drawn choices say
        which masked frames keep their own features and which take another frame's (`mask_source`)."""
        emb = self.mask_emb.to(x.dtype)
        if "mask_source" not in draws:
            return torch.where(mask.unsqueeze(-1), emb, x)
        B, T, D = x.shape
        x = x.reshape(B * T, D).index_select(0, draws["mask_source"].reshape(-1)).view(B, T, D)
        return torch.where(draws["mask_to_emb"].unsqueeze(-1), emb, x)

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
        draws: Optional[Dict[str, torch.Tensor]] = None,
    ) -> Dict[str, torch.Tensor]:
        """source: B x L waveform; target_list: per stream B x T_label dictionary indices.
        `output_layer` is 1-based (fairseq convention). `draws`: the step's random draws (span masks, noise
        mixture, layerdrop, random codebooks) as the collater makes them (`data/step_draws.py`); without them
        the model draws them itself (`_draw_here`, seeded: a resumed run repeats the same draws).

        Training output (fixed shapes whatever the draws): `proj` K x B x T x F, `targets` K x B x T,
        `masked` / `unmasked` B x T bool (non-padding frames), `features_pen`, the teacher losses over the
        masked frames, and when the model drew itself the host counts `masked_frames`, `valid_frames`.
        """
        if not target_list and not features_only and hasattr(self, "online_targets"):
            target_list = self.online_targets(source)  # per codebook B x T_label codes of the clean audio
        counts: dict = {}
        if draws is None:
            self._calls_this_update += 1
            draws, counts = self._draw_here(source, target_list, padding_mask, mask)
        out = self._forward(source, target_list, padding_mask, cqt_labels, mel_labels, mask, features_only,
                            output_layer, return_hidden_states, draws)
        out.update(counts)
        return out

    def _forward(self, source, target_list, padding_mask, cqt_labels, mel_labels, mask, features_only,
                 output_layer, return_hidden_states, draws) -> Dict[str, torch.Tensor]:
        clean = source
        if self.training and "mix_len" in draws:
            source = apply_noise_mixture(source, draws["mix_start"], draws["mix_pos"], draws["mix_len"],
                                         self.opts.inbatch_noise_augment_volume)

        features = self.forward_features(source, padding_mask)  # B x C x T
        if target_list:
            features, target_list = self.forward_targets(features, target_list)
        features_pen = features.float().pow(2).mean()
        features = features.transpose(1, 2)  # B x T x C
        if self.opts.feature_extractor_cqt:
            cqt = cqt_frames(self.feature_extractor_cqt, source, padding_mask=padding_mask)[:, : features.size(1)]
            features = torch.cat([features, cqt.to(features.dtype)], dim=2)
        features = self.layer_norm(features)
        B, T = features.shape[:2]
        if padding_mask is not None:
            padding_mask = frame_padding_mask(padding_mask, self.conv_layers, T)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
            if self.post_proj_layer_norm is not None:
                features = self.post_proj_layer_norm(features)
        features = self.dropout_input(features)  # B x T x D

        # all-False padding (cropped batches) acts as none: attention without a mask (a sync, padded batches only)
        pad = padding_mask if padding_mask is not None and bool(padding_mask.any()) else None
        span = draws.get("mask") if mask else None
        if span is not None and tuple(span.shape) != (B, T):
            raise ValueError(f"net_input draws: span mask of shape {tuple(span.shape)} for {B} x {T} model frames "
                             "(drawn for another CNN or crop?)")
        x = features if span is None else self._fill_masked(features, span, draws)
        if mask and self.opts.mask_channel_prob > 0:
            x = self._channel_mask(x)
        x, hidden_states = self.encoder(
            x, pad, tgt_layer=None if output_layer is None else output_layer - 1,
            return_hidden_states=return_hidden_states,
            layer_keep=draws.get("layer_keep") if self.training else None,
            layer_keep_host=draws.get("layer_keep_host") if self.training else None,
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
            "codebook_weight": draws.get("codebook_weight"),
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
    def get_logits(self, net_output, is_masked: bool = True) -> List[torch.Tensor]:
        """fairseq's hubert criterion: per stream S x (1 + C) logits of the masked (or unmasked) frames in the
        original layout (column 0 the target). Computed once per output; the `mert` criterion uses
        `frame_logits` instead."""
        key = "_logit_m_list" if is_masked else "_logit_u_list"
        if key not in net_output:
            logits = []
            if not (self.opts.skip_masked if is_masked else self.opts.skip_nomask) and net_output["proj"] is not None:
                where = net_output["masked" if is_masked else "unmasked"]
                weight = net_output.get("codebook_weight")
                chosen = range(len(self.num_classes)) if weight is None else [
                    k for k, w in enumerate(weight.tolist()) if w > 0]
                scales, embs = self._logit_scales(), self._label_embeddings()
                for k in chosen:
                    scale = scales[k] if torch.is_tensor(scales) else scales
                    logits.append(cosine_logits(select_frames(net_output["proj"][k], where), embs[k],
                                                select_frames(net_output["targets"][k], where), scale).float())
            net_output[key] = logits
        return net_output[key]

    def get_targets(self, net_output, is_masked: bool = True) -> List[torch.Tensor]:
        """The target is column 0 of every logits row (original layout)."""
        return [x.new_zeros(x.size(0), dtype=torch.long) for x in self.get_logits(net_output, is_masked)]

    def get_extra_losses(self, net_output):
        names = [n for n in ("features_pen", "cqt_pred_m", "mel_pred_m") if n in net_output]
        return [net_output[n] for n in names], names

    def remove_pretraining_modules(self) -> None:
        self.target_glu = None
        self.final_proj = None
