"""The `mert` model: layout compatible with the original, numerics equal to fairseq's encoder,
teachers, mixture and masked prediction."""
import math

import numpy as np

import pytest
import torch
from fairseq.models.wav2vec.wav2vec2 import TransformerEncoder as FairseqTransformerEncoder

from mert_fairseq.models.teachers.cqt import CQTTeacher
from mert_fairseq.criterions.mert_criterion import MertCriterion
from mert_fairseq.models.noise_mixture import mix_in_batch_noise
from tiny_models import STREAMS, tiny_model, tiny_sample

ORIGINAL_KEYS = [
    "feature_extractor.conv_layers.0.0.weight", "feature_extractor.conv_layers.0.2.weight",
    "feature_extractor.conv_layers.6.0.weight", "post_extract_proj.weight", "layer_norm.weight", "mask_emb",
    "encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.bias",
    "encoder.layers.1.self_attn.q_proj.weight", "encoder.layers.1.self_attn.k_proj.bias",
    "encoder.layers.1.self_attn.v_proj.weight", "encoder.layers.1.self_attn.out_proj.weight",
    "encoder.layers.1.self_attn_layer_norm.weight", "encoder.layers.1.fc1.weight", "encoder.layers.1.fc2.bias",
    "encoder.layers.1.final_layer_norm.weight", "encoder.layer_norm.weight", "final_proj.weight",
    "label_embs_concat", "encoder_cqt_model.fc.weight",
]


def batch(model, B=3, seconds=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = int(24000 * seconds)
    source = 0.1 * torch.randn(B, L, generator=g)
    n_labels = math.ceil(L / 320)
    targets = [torch.randint(4, 4 + 16, (B, n_labels), generator=g) for _ in range(len(model.num_classes))]
    return source, targets


def test_state_dict_keys_match_the_original_layout():
    model = tiny_model("rvq_95m", conv_feature_layers="[(48,10,5)] + [(48,3,2)] * 4 + [(48,2,2)] * 2")
    keys = set(model.state_dict())
    missing = [k for k in ORIGINAL_KEYS if k not in keys]
    assert not missing, missing
    assert not any("cqt_kernels" in k or "lenghts" in k for k in keys), "CQT kernels must not be saved"
    assert model.label_embs_concat.shape == (8 * 20, 16)  # 8 codebooks x (4 specials + 16 codes), final_dim
    assert model.final_proj.weight.shape == (8 * 16, 32)  # untied: one 16-dim projection per codebook


def test_original_state_dict_with_cqt_buffers_and_new_weight_norm_keys_loads_strict():
    src = tiny_model("rvq_95m")
    state = dict(src.state_dict())
    # What the original stored: nnAudio kernels as buffers; newer torch: parametrized weight norm keys.
    state["encoder_cqt_model.spec_layer.cqt_kernels_real"] = torch.zeros(84, 1, 8)
    state["encoder_cqt_model.spec_layer.cqt_kernels_imag"] = torch.zeros(84, 1, 8)
    state["encoder_cqt_model.spec_layer.lenghts"] = torch.ones(84)
    state["encoder.pos_conv.0.parametrizations.weight.original0"] = state.pop("encoder.pos_conv.0.weight_g")
    state["encoder.pos_conv.0.parametrizations.weight.original1"] = state.pop("encoder.pos_conv.0.weight_v")
    dst = tiny_model("rvq_95m")
    dst.load_state_dict(state, strict=True)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    with pytest.raises(RuntimeError, match="Missing key"):
        bad = dict(src.state_dict())
        bad.pop("mask_emb")
        tiny_model("rvq_95m").load_state_dict(bad, strict=True)


@pytest.mark.parametrize("family", ["rvq_95m", "rvq_330m"])
def test_encoder_equals_fairseq_wav2vec2_encoder(family):
    """Original checkpoints were trained with fairseq's encoder: same weights -> same outputs."""
    model = tiny_model(family).eval()
    reference = FairseqTransformerEncoder(model.cfg).eval()
    reference.load_state_dict(model.encoder.state_dict(), strict=True)
    x = torch.randn(2, 37, 32)
    padding = torch.zeros(2, 37, dtype=torch.bool)
    padding[1, 30:] = True
    with torch.no_grad():
        ours, _ = model.encoder(x, padding)
        ref, _ = reference(x, padding)
        ours_l1, _ = model.encoder(x, padding, tgt_layer=0)
        ref_l1, _ = reference(x, padding, layer=0)
    assert torch.allclose(ours[~padding], ref[~padding], atol=1e-5), (ours - ref).abs().max()
    assert torch.allclose(ours_l1[~padding], ref_l1[~padding], atol=1e-5)


@pytest.mark.parametrize("family", ["rvq_95m", "rvq_330m", "kmeans"])
def test_training_step_each_family(family):
    torch.manual_seed(0)
    model = tiny_model(family).train()
    source, targets = batch(model)
    criterion = MertCriterion(None, pred_masked_weight=1.0, pred_nomask_weight=0.0, loss_weights=[10, 1])
    loss, sample_size, log = criterion(model, tiny_sample(model, source, targets))
    assert torch.isfinite(loss) and loss > 0
    assert sample_size > 0 and len([k for k in log if k.startswith("loss_m_")]) == STREAMS[family]
    assert "loss_cqt_pred_m" in log and "loss_features_pen" in log
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads["label_embs_concat"] is not None and grads["label_embs_concat"].abs().sum() > 0
    assert grads["encoder_cqt_model.fc.weight"].abs().sum() > 0
    assert grads["feature_extractor.conv_layers.0.0.weight"].abs().sum() > 0


def test_masked_loss_matches_manual_cross_entropy():
    """The mert criterion's masked loss equals a cross-entropy computed by hand: cosine of each masked
    frame's projection with every label embedding, / logit_temp, explicit log-softmax over the C classes,
    minus the target's log-probability, summed over the masked frames (agreement within 1e-5 per frame)."""
    torch.manual_seed(1)
    model = tiny_model("kmeans").eval()
    source, targets = batch(model, B=2)
    seen = {}
    model.register_forward_hook(lambda m, args, out: seen.update(out=out))
    model.encoder.register_forward_hook(lambda m, args, out: seen.update(x=out[0]))  # B x T x D
    criterion = MertCriterion(None, pred_masked_weight=1.0, pred_nomask_weight=0.0, loss_weights=None)
    with torch.no_grad():
        loss, sample_size, log = criterion(model, tiny_sample(model, source, targets))
    seen["mask"] = seen["out"]["masked"]  # the real masking's mask, kept for the hand computation
    logits = model.frame_logits(seen["out"])[0]  # B*T x C: every frame, every class
    assert logits.shape == (seen["mask"].numel(), 20)
    assert torch.all(logits.abs() <= 1.0 / model.cfg.logit_temp + 1e-4) and torch.isfinite(logits).all()

    x, mask = seen["x"].double(), seen["mask"]  # B x T x D, B x T
    assert model.feat2tar_ratio == 1 and mask.sum() == sample_size > 0
    frames = x[mask]  # S x D, row-major like the model
    target = targets[0][:, : x.shape[1]][mask]  # S dictionary indices
    proj = frames @ model.final_proj.weight.double().t() + model.final_proj.bias.double()  # S x F
    embs = model.label_embs_concat.double()  # C x F
    cos = (proj @ embs.t()) / (proj.norm(dim=1, keepdim=True) * embs.norm(dim=1))  # S x C
    scores = cos / model.cfg.logit_temp
    log_probs = scores - torch.log(torch.exp(scores).sum(dim=1, keepdim=True))  # log-softmax over C
    manual = -log_probs.gather(1, target.long().unsqueeze(1)).sum()
    assert abs(loss.item() - manual.item()) / sample_size < 1e-5, (loss.item(), manual.item())
    assert float(log["loss_m_0"]) == pytest.approx(manual.item(), rel=1e-6)


def test_mixture_only_in_training():
    model = tiny_model("rvq_95m", mixture_prob=1.0, mask_prob=0.0)
    clean = tiny_model("rvq_95m", mixture_prob=-1.0, mask_prob=0.0)
    clean.load_state_dict(model.state_dict())
    source, _ = batch(model)
    model.eval(), clean.eval()
    with torch.no_grad():
        a, _ = model.extract_features(source.clone())
        b, _ = clean.extract_features(source.clone())
    assert torch.equal(a, b)


def test_noise_mixture_adds_other_clips_only():
    """Clips 0 and 2 silent, clip 1 ones. Rows 0 and 2 draw their slice from [clip 1, the other silent clip]
    laid end to end: a seed is taken where both slices fall inside clip 1 (checked from the draws), so each
    row gets 100-200 samples of exactly 0.5; clip 1's pool is silent, so it stays as it was."""
    from mert_fairseq.data.step_draws import draw_noise_mixture

    src = torch.zeros(3, 1000)
    src[1] = 1.0  # only clip 1 has signal
    def inside_clip_1(seed):  # row 0's pool is [clip 1, clip 2], row 2's is [clip 0, clip 1]
        d = draw_noise_mixture(np.random.default_rng(seed), 3, 1000, 1.0, [100, 200], [1, 1])
        start, end = d["mix_start"][:, 0], d["mix_start"][:, 0] + d["mix_len"][:, 0]
        return end[0] <= 1000 and start[2] >= 1000

    seed = next(s for s in range(100) if inside_clip_1(s))
    mixed = mix_in_batch_noise(src, 1.0, [100, 200], [1, 1], volume=0.5, rng=np.random.default_rng(seed))
    assert torch.equal(src[1], torch.ones(1000))  # input untouched
    for i in (0, 2):
        added = mixed[i]
        n = int((added != 0).sum())
        assert 100 <= n <= 200 and torch.all(added[added != 0] == 0.5)
    assert torch.equal(mixed[1], src[1])  # clip 1's noise pool is all zeros
    assert torch.equal(mix_in_batch_noise(src, 0.0, [100, 200], [1, 3]), src)


def test_batched_noise_mixture_equals_a_loop_over_clips_and_slices():
    """apply_noise_mixture (one gather) == the per-clip loop over the other clips laid end to end."""
    from mert_fairseq.data.step_draws import draw_noise_mixture
    from mert_fairseq.models.noise_mixture import apply_noise_mixture

    B, L = 4, 500
    src = torch.randn(B, L)
    d = draw_noise_mixture(np.random.default_rng(1), B, L, 0.7, [50, 300], [1, 3])
    got = apply_noise_mixture(src, d["mix_start"], d["mix_pos"], d["mix_len"], volume=0.3)
    want = src.clone()
    for i in range(B):
        pool = torch.cat([src[:i], src[i + 1:]]).flatten()
        for start, pos, n in zip(*(d[k][i].tolist() for k in ("mix_start", "mix_pos", "mix_len"))):
            want[i, pos:pos + n] += 0.3 * pool[start:start + n]
    assert int((d["mix_len"] > 0).sum()) >= 3  # some clips augmented, some slices used
    assert torch.allclose(got, want, atol=1e-6)


def test_cqt_target_shape_and_frame_alignment():
    teacher = CQTTeacher(8, 84, 24000, 75, align_to_cnn=False)
    L = 24000
    assert teacher.targets(torch.zeros(1, L), 74).shape == (1, 74, 84)
    assert teacher.spec_layer(torch.zeros(1, L)).shape[-1] == L // 320 + 1  # frames = floor(L/320) + 1
    # A 2 kHz click train burst centred on sample 320 * 40: the CQT frame centred there is the loudest.
    t = torch.arange(L) / 24000
    for align, centre in ((False, 320 * 40), (True, 320 * 40 + 200)):
        teacher = CQTTeacher(8, 84, 24000, 75, align_to_cnn=align)
        wav = torch.sin(2 * torch.pi * 2000 * t) * torch.exp(-(((torch.arange(L) - centre) / 60.0) ** 2))
        energy = teacher.targets(wav[None], 74)[0, :, 60:].sum(-1)  # high bins: short kernels, sharp in time
        assert int(energy.argmax()) == 40, (align, int(energy.argmax()))
    with pytest.raises(ValueError, match="fewer than"):
        teacher.targets(torch.zeros(1, 3200), 20)


def test_extract_hidden_states_layout():
    model = tiny_model("rvq_330m").eval()
    source, _ = batch(model, B=2)
    hidden, _ = model.extract_hidden_states(source)
    assert len(hidden) == 3  # encoder_layers + 1, transformers layout
    last, _ = model.extract_features(source)
    assert torch.allclose(hidden[-1], last)
    layer1, _ = model.extract_features(source, output_layer=1)
    assert torch.allclose(hidden[1], layer1)  # input of layer 2 = output of layer 1 (pre-LN)


def test_mask_schedules_are_refused_clearly():
    """The data loader draws the masks and does not know the update: a mask schedule is an error naming the
    field (no original recipe sets one; their '[]' default loads)."""
    for field, value in (("mask_dynamic_prob_step", "[10, 20]"), ("mask_dynamic_len", "[2, 5]")):
        with pytest.raises(ValueError, match=f"model.{field}=.*mask schedules are not supported"):
            tiny_model("kmeans", **{field: value})
    assert tiny_model("kmeans", mask_dynamic_prob_step="[]", mask_dynamic_prob="[]").draw_spec().mask_prob == 0.8


def test_unsupported_values_fail_clearly():
    with pytest.raises(NotImplementedError, match="conformer"):
        tiny_model("kmeans", layer_type="conformer")
    with pytest.raises(ValueError, match="conv_feature_layers"):
        tiny_model("kmeans", conv_feature_layers="[(32, 10)]")


def test_training_step_is_a_function_of_its_draws():
    """The model draws nothing: the same draws (same seed) -> the same loss whatever the global RNG state
    (exact resume); other draws -> another loss; masking without draws is a clear error."""
    model = tiny_model("kmeans", mixture_prob=0.5, inbatch_noise_augment_len_range="[2400, 4800]").train()
    source, targets = batch(model)
    criterion = MertCriterion(None, 1.0, 0.0, [10, 1])
    losses = []
    for draw_seed, torch_seed in ((5, 3), (5, 4), (6, 3)):
        torch.manual_seed(torch_seed)
        losses.append(criterion(model, tiny_sample(model, source.clone(), targets, seed=draw_seed))[0].item())
    assert losses[0] == losses[1] and losses[2] != losses[0], losses
    with pytest.raises(ValueError, match="needs the step's draws"):
        model(source, targets)


def test_fields_without_effect_warn(caplog):
    with caplog.at_level("WARNING"):
        tiny_model("kmeans", dropout_features=0.1, chunk_nce_cal=1000)
    text = caplog.text
    assert "model.dropout_features=0.1 has no effect" in text and "model.chunk_nce_cal=1000 has no effect" in text
    caplog.clear()
    with caplog.at_level("WARNING"):
        tiny_model("kmeans")
    assert "has no effect" not in caplog.text
