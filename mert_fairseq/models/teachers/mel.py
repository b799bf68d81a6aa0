"""Optional log-mel reconstruction teacher (`audio_mel_loss_m`), the original's alternative to the
CQT: a Linear head regresses the batch-standardised log-mel of the clean audio at masked frames."""
from __future__ import annotations

import torch
import torchaudio
from torch import nn

from mert_fairseq.models.teachers.cqt import exclude_buffers_from_state_dict


class MelTeacher(nn.Module):
    """Module names (`fc`, `spec_layer`) match the original's `encoder_mel_model`."""

    def __init__(self, input_dim: int, n_bins: int, sample_rate: int, label_rate: float) -> None:
        super().__init__()
        self.spec_layer = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=2048, hop_length=int(sample_rate // label_rate), f_min=32.7,
            n_mels=n_bins, window_fn=torch.hann_window, center=True, pad_mode="constant",
            mel_scale="htk", normalized=True,
        )
        exclude_buffers_from_state_dict(self.spec_layer)
        self.fc = nn.Linear(input_dim, n_bins)

    @torch.no_grad()
    def targets(self, wav: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Clean audio B x L -> standardised log-mel B x num_frames x bins (fp32)."""
        with torch.autocast(device_type=wav.device.type, enabled=False):
            logmel = torch.log(self.spec_layer(wav.float()).transpose(1, 2) + 1e-5)
        logmel = (logmel - logmel.mean()) / (logmel.std() + 1e-5)
        return logmel[:, :num_frames]

    def frame_errors(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """x: ... x D encoder outputs, target: ... x bins -> squared error per frame, averaged over bins (fp32)."""
        return (self.fc(x).float() - target).pow(2).mean(-1)
