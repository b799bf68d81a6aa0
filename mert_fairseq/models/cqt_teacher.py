"""The musical teacher: a constant-Q transform of the clean audio that the model regresses at masked
frames (`audio_cqt_loss_m`), and the optional CQT input front end (`feature_extractor_cqt`).

The CQT is nnAudio's CQT1992v2 with the original's settings (fmin 32.7 Hz, 7 octaves, hann,
norm 1, centred with constant padding, magnitude). It is always computed in fp32, outside autocast,
without gradient, and its kernels are non-persistent buffers (rebuilt at load, never stored in
checkpoints; kernels found in original checkpoints are dropped on load).
"""
from __future__ import annotations

import torch
from nnAudio.features.cqt import CQT1992v2
from torch import nn

CQT_FMIN = 32.7
CQT_OCTAVES = 7


def build_cqt(sample_rate: int, hop_length: int, n_bins: int) -> CQT1992v2:
    cqt = CQT1992v2(
        sr=sample_rate,
        hop_length=hop_length,
        fmin=CQT_FMIN,
        n_bins=n_bins,
        bins_per_octave=n_bins // CQT_OCTAVES,
        filter_scale=1,
        norm=1,
        window="hann",
        center=True,
        pad_mode="constant",
        trainable=False,
        output_format="Magnitude",
        verbose=False,
    )
    for name, _ in cqt.named_buffers(recurse=False):
        cqt._non_persistent_buffers_set.add(name)
    return cqt


@torch.no_grad()
def cqt_frames(cqt: CQT1992v2, wav: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """wav: B x L -> B x (floor((L - offset) / hop) + 1) x bins, fp32; frame j centred at offset + hop*j."""
    with torch.autocast(device_type=wav.device.type, enabled=False):
        return cqt(wav[:, offset:].float()).transpose(1, 2)


class CQTTeacher(nn.Module):
    """Linear head D -> bins on masked frames, MSE against the clean-audio CQT.

    Module names (`fc`, `spec_layer`) match the original's `encoder_cqt_model`.
    """

    def __init__(self, input_dim: int, n_bins: int, sample_rate: int, label_rate: float, align_to_cnn: bool,
                 cnn_receptive_field: int = 400) -> None:
        super().__init__()
        hop = int(sample_rate // label_rate)
        self.spec_layer = build_cqt(sample_rate, hop, n_bins)
        self.fc = nn.Linear(input_dim, n_bins)
        # CNN frame j covers samples [hop*j, hop*j + receptive field); centre CQT frames there if asked.
        self.offset = cnn_receptive_field // 2 if align_to_cnn else 0

    def targets(self, wav: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Clean audio B x L -> CQT magnitudes B x num_frames x bins (fp32)."""
        cqt = cqt_frames(self.spec_layer, wav, self.offset)
        if cqt.size(1) < num_frames:
            raise ValueError(f"CQT has {cqt.size(1)} frames, fewer than the {num_frames} model frames")
        return cqt[:, :num_frames]

    def loss(self, x_masked: torch.Tensor, target_masked: torch.Tensor) -> torch.Tensor:
        """x_masked: S x D encoder outputs, target_masked: S x bins -> mean squared error (fp32)."""
        return nn.functional.mse_loss(self.fc(x_masked).float(), target_masked)
