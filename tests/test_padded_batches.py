"""A right-padded batch gives every clip the features it has alone (issue 30, item 1): the group-norm CNN
takes each clip's statistics over its real frames, the CQT input sees zeros after each clip, attention skips
padded frames. Checked on demo-corpus music of 4, 7 and 10 s, on every hidden state over the real frames,
for the fairseq model (`extract_hidden_states`, `extract_features`) and the HF export (`AutoModel`).
Before the fix: up to 2.5 apart on states of magnitude 4-5."""
import logging

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from export_helpers import build_model
from mert_fairseq.export.convert import write_hf_folder
from mert_fairseq.prep.demo_corpus import clip_spec, render_clip

SR = 24000
SECONDS = (4, 7, 10)
CQT = {"feature_extractor_cqt": True, "feature_extractor_cqt_bins": 84}
VARIANTS = {
    # name: (layout, model overrides, tolerance)
    "group_norm": ("95m", {}, 1e-5),
    "group_norm_wav_normalize": ("95m", {"wav_normalize": True}, 1e-5),
    "layer_norm": ("330m", {}, 1e-5),
    # the CQT's FFT length follows the padded length: rounding differs a little
    "group_norm_cqt_input": ("95m", CQT, 5e-5),
    "layer_norm_cqt_input": ("330m", CQT, 5e-5),
}


@pytest.fixture(scope="module")
def clips():
    """Demo-corpus music (chords, bass, melody, drums) of 4, 7 and 10 s, different pieces."""
    return [torch.from_numpy(render_clip(clip_spec(i, s, SR, seed=3)).astype(np.float32))
            for i, s in enumerate(SECONDS)]


def _pad(clips):
    """-> (B x L zero-padded batch, B x L attention mask, 1 = real)."""
    L = max(len(c) for c in clips)
    batch, mask = torch.zeros(len(clips), L), torch.zeros(len(clips), L, dtype=torch.long)
    for b, c in enumerate(clips):
        batch[b, : len(c)], mask[b, : len(c)] = c, 1
    return batch, mask


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (fairseq model, HF AutoModel of its export)."""
    from transformers import AutoModel

    root = tmp_path_factory.mktemp("padded_exports")
    out = {}
    for i, (name, (layout, overrides, _)) in enumerate(VARIANTS.items()):
        model = build_model(layout, seed=i, dropout=0.0, attention_dropout=0.0, dropout_input=0.0,
                            encoder_layerdrop=0.0, **overrides).float().eval()
        write_hf_folder(model, OmegaConf.create({"sample_rate": SR, "normalize": False}), root / name)
        out[name] = (model, AutoModel.from_pretrained(str(root / name), trust_remote_code=True).eval())
    return out


def _max_diff(batch_states, single_states, b):
    """Largest |difference| over every hidden state, clip b's real frames."""
    frames = single_states[0].shape[1]
    assert all(s.shape[1] == frames for s in single_states)
    return max(float((p[b, :frames] - s[0]).abs().max()) for p, s in zip(batch_states, single_states))


def _each_clip_as_alone(name, clips, batch_states, alone):
    """Every clip's real frames in the batch's states vs `alone(clip)`'s, within the variant's tolerance."""
    tol = VARIANTS[name][2]
    for b, clip in enumerate(clips):
        single = alone(clip[None])
        diff = _max_diff(batch_states, single, b)
        assert diff <= tol, f"{name}: clip of {SECONDS[b]} s differs by {diff:.3g} (tolerance {tol:g})"
        assert float(single[-1].abs().mean()) > 0.1  # states of real magnitude, not a vacuous comparison


@pytest.mark.parametrize("name", list(VARIANTS))
@torch.no_grad()
def test_fairseq_padded_batch_equals_clips_alone(models, clips, name):
    model, _ = models[name]
    batch, mask = _pad(clips)
    states, frame_pad = model.extract_hidden_states(batch, padding_mask=mask == 0)
    _each_clip_as_alone(name, clips, states, lambda wav: model.extract_hidden_states(wav)[0])
    last, _ = model.extract_features(batch, padding_mask=mask == 0)
    _each_clip_as_alone(name, clips, [last], lambda wav: [model.extract_features(wav)[0]])
    for b, clip in enumerate(clips):  # exactly the clip's own frames are real
        assert int((~frame_pad[b]).sum()) == model.extract_features(clip[None])[0].shape[1]


@pytest.mark.parametrize("name", list(VARIANTS))
@torch.no_grad()
def test_hf_export_padded_batch_equals_clips_alone(models, clips, name):
    model, hf = models[name]
    batch, mask = _pad(clips)
    states = hf(batch, attention_mask=mask, output_hidden_states=True).hidden_states
    _each_clip_as_alone(name, clips, states, lambda wav: hf(wav, output_hidden_states=True).hidden_states)
    for clip in clips:  # and the export equals fairseq, clip by clip
        ref, _ = model.extract_hidden_states(clip[None])
        assert _max_diff(hf(clip[None], output_hidden_states=True).hidden_states, ref, 0) <= 1e-5


def test_without_the_mask_the_group_norm_model_is_wrong_and_warns(models, clips, caplog):
    """The failure the mask prevents is real (so the comparison above can fail), and the model says so."""
    _, hf = models["group_norm"]
    batch, _ = _pad(clips)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        unmasked = hf(batch).last_hidden_state
        alone = hf(clips[0][None]).last_hidden_state
    assert float((unmasked[0, : alone.shape[1]] - alone[0]).abs().max()) > 0.1
    assert any("attention_mask" in r.getMessage() and "2 of 3 clips" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        hf(torch.stack([clips[0][: 4 * SR], clips[1][: 4 * SR]]))  # equal lengths: nothing to warn about
    assert not [r for r in caplog.records if "attention_mask" in r.getMessage()]


def test_feature_extractor_returns_the_mask_by_default(models, clips, tmp_path):
    from transformers import Wav2Vec2FeatureExtractor

    model, hf = models["group_norm"]
    folder = tmp_path / "export"
    write_hf_folder(model, OmegaConf.create({"sample_rate": SR, "normalize": False}), folder)
    fe = Wav2Vec2FeatureExtractor.from_pretrained(str(folder))
    inputs = fe([c.numpy() for c in clips], sampling_rate=SR, padding=True, return_tensors="pt")
    assert inputs["attention_mask"].sum(-1).tolist() == [len(c) for c in clips]
    with torch.no_grad():
        out = hf(**inputs).last_hidden_state
        alone = hf(clips[1][None]).last_hidden_state
    assert float((out[1, : alone.shape[1]] - alone[0]).abs().max()) <= 1e-5


def test_left_padding_is_refused_with_a_clear_error(models, clips):
    _, hf = models["group_norm"]
    batch, mask = _pad(clips)
    with pytest.raises(ValueError, match="right padding"):
        hf(batch, attention_mask=mask.flip(-1))
