"""Random-projection (BEST-RQ) online targets: seeded and deterministic, saved with the checkpoint, no
label files needed, identical across a stop/resume; existing configs keep their state-dict keys."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mert_fairseq.models.teachers.random_projection import RandomProjectionTargets
from training_runs import load_params, metric, train
from tiny_models import tiny_model, tiny_sample


def audio(batch=2, seconds=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 24000)) / 24000
    return 0.3 * torch.sin(2 * np.pi * 220 * t * (1 + torch.rand(batch, 1, generator=g))) \
        + 0.01 * torch.randn(batch, len(t), generator=g)


@pytest.mark.parametrize("feature", ["mel", "cqt"])
def test_targets_are_deterministic_for_a_seed(feature):
    wav = audio()
    make = lambda seed: RandomProjectionTargets(24000, 75, n_codebooks=2, codebook_size=64, feature=feature,
                                                n_bins=84 if feature == "cqt" else 80, seed=seed, offset=4)
    a, b, c = make(0)(wav), make(0)(wav), make(1)(wav)
    assert len(a) == 2 and a[0].shape == (2, 24000 // 320 + 1) and a[0].dtype == torch.long
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert all(4 <= int(x.min()) and int(x.max()) < 4 + 64 for x in a)
    assert len(torch.unique(a[0])) >= 4  # the codes follow the audio, not a constant
    assert set(make(0).state_dict()) == {"projection", "codebooks"}  # spectrogram buffers are rebuilt


def test_model_state_dict_keys_unchanged_without_the_option():
    base = tiny_model("kmeans")
    task_cfg = OmegaConf.create({"sample_rate": 24000, "label_rate": 75, "online_targets": "random_projection",
                                 "online_targets_codebooks": 1, "online_targets_codebook_size": 16,
                                 "online_targets_dim": 8, "online_targets_feature": "mel", "online_targets_bins": 80,
                                 "online_targets_seed": 3})
    torch.manual_seed(0)
    online = tiny_model("kmeans", task=task_cfg)
    assert set(online.state_dict()) - set(base.state_dict()) == {"online_targets.projection", "online_targets.codebooks"}
    assert set(base.state_dict()) <= set(online.state_dict())
    online.train()
    wav = audio(seconds=2.0)
    net_input = tiny_sample(online, wav, [])["net_input"]  # draws for the frames the online codes cover
    out = online(**net_input)  # no target_list: codes come from the audio
    T = 149  # CNN frames of 2 s (75 Hz, unpadded convolutions), each with a code (2 s // 320 + 1 = 151)
    assert net_input["draws"].mask.shape == (2, T)
    assert out["proj"].shape[:3] == (1, 2, T) and out["targets"].shape == (1, 2, T)
    assert online.frame_logits(out).shape == (1, 2 * T, 20) and torch.isfinite(out["cqt_pred_m"])


def test_training_without_label_files_resumes_exactly(tone_data, tmp_path):
    empty = tmp_path / "no_labels"
    empty.mkdir()
    data = {"data": tone_data["data"], "label_dir": str(empty), "labels": ["rp"]}
    common = ["task.online_targets=random_projection", "task.online_targets_codebook_size=64",
              "dataset.max_tokens=192000", "dataset.disable_validation=true",
              "checkpoint.save_interval_updates=1000", "lr_scheduler.warmup_updates=3", "common.log_interval=1"]
    log = train(data, tmp_path / "straight", "optimization.max_update=6", *common)
    losses = metric(log, "train_inner", "loss")
    assert len(losses) == 6 and all(np.isfinite(losses)), log[-2000:]
    train(data, tmp_path / "resumed", "optimization.max_update=4", *common, "+lr_scheduler.total_num_update=6")
    train(data, tmp_path / "resumed", "optimization.max_update=6", *common)
    a, b = load_params(tmp_path / "straight")["model"], load_params(tmp_path / "resumed")["model"]
    assert torch.equal(a["online_targets.codebooks"], b["online_targets.codebooks"])
    assert torch.equal(a["online_targets.projection"], b["online_targets.projection"])
    fresh = RandomProjectionTargets(24000, 75, codebook_size=64, seed=0)
    assert torch.equal(a["online_targets.codebooks"], fresh.codebooks)  # a pure function of the seed
    for k, v in a.items():
        assert torch.allclose(v, b[k], atol=1e-6), k
