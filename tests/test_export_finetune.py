"""Fine-tuning and hand-off of the HF export (issue 30, item 4): activation checkpointing gives the same
training steps, every export folder carries a model card that says how the model was trained and what was
verified, and the converter measures the bf16 inference difference."""
import json

import numpy as np
import pytest
import torch

from export_helpers import build_model, save_checkpoint
from mert_fairseq.export.convert import convert_checkpoint
from mert_fairseq.prep.demo_corpus import clip_spec, render_clip

SR = 24000


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune_export")
    ckpt = save_checkpoint(build_model("95m", seed=5, feature_extractor_cqt=True, feature_extractor_cqt_bins=84),
                           root / "ckpt.pt", normalize=True)
    folder = root / "hf"
    return ckpt, folder, convert_checkpoint(ckpt, folder)


def _train_two_steps(folder, checkpointing: bool):
    """Two AdamW steps on a padded batch of demo music (dropout and layerdrop on, same seed); returns the
    gradients of both steps, name -> tensor."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True)
    model.config.layerdrop = 0.0
    if checkpointing:
        model.gradient_checkpointing_enable()
        assert model.is_gradient_checkpointing and model.encoder.gradient_checkpointing
    model.train()
    clips = [torch.from_numpy(render_clip(clip_spec(i, s, SR, seed=1)).astype(np.float32)) for i, s in
             enumerate((1.0, 1.5))]
    batch, mask = torch.zeros(2, len(clips[1])), torch.zeros(2, len(clips[1]), dtype=torch.long)
    for b, c in enumerate(clips):
        batch[b, : len(c)], mask[b, : len(c)] = c, 1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    grads = []
    for _ in range(2):
        opt.zero_grad()
        out = model(batch, attention_mask=mask, output_hidden_states=True)
        loss = sum(h.pow(2).mean() for h in out.hidden_states)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
    return grads


def test_gradient_checkpointing_gives_the_same_gradients(export):
    _, folder, _ = export
    plain, checkpointed = _train_two_steps(folder, False), _train_two_steps(folder, True)
    for step, (a, b) in enumerate(zip(plain, checkpointed)):
        assert a.keys() == b.keys() and any("encoder.layers.1" in n for n in a)
        for name in a:
            diff = float((a[name] - b[name]).abs().max())
            assert diff <= 1e-5, f"step {step + 1}: gradient of {name} differs by {diff:.3g}"
    # the second step saw the first step's update: both runs moved the same way
    assert any(float((plain[0][n] - plain[1][n]).abs().max()) > 1e-6 for n in plain[0])


def test_model_card_says_how_trained_how_to_load_and_what_was_verified(export):
    ckpt, folder, result = export
    card = (folder / "README.md").read_text()
    report = json.loads((folder / "verification.json").read_text())
    assert "24000 Hz" in card and "+ 84-bin CQT" in card and "75 frames per second" in card
    assert "2 transformer layers (post-LN)" in card and "3 states" in card
    assert "label stream(s) from files: encodec_0, encodec_1" in card and "span length 5, probability 0.8" in card
    assert "84-bin CQT at the masked frames" in card and "waveform normalised per crop: True" in card
    assert 'AutoModel.from_pretrained("PATH_OR_REPO", trust_remote_code=True)' in card
    assert "padding=True" in card and "gradient_checkpointing_enable()" in card
    assert f"within {report['tolerance']:g}" in card and str(ckpt) in card
    bf16 = report["bf16"]
    assert f"{bf16['max_abs_diff']:.3g}" in card


def test_bf16_difference_is_measured_and_bounded(export):
    """bf16 weights and activations: about 3 significant digits; the measured difference is a few percent of the
    largest state, far from fp32's 1e-5 and far from garbage."""
    _, _, result = export
    bf16 = result["report"]["bf16"]
    assert 1e-4 < bf16["max_abs_diff"] and bf16["max_rel_diff"] < 0.1, bf16
    assert bf16["mean_abs_diff"] < bf16["max_abs_diff"]
