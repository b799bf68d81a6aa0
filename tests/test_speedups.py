"""The training speed-ups compute the same numbers as the straightforward formulation:
SDPA attention == fairseq MultiheadAttention, spectral CQT == nnAudio CQT1992v2 (within a stated
tolerance), batched normalised-matmul logits == the original's materialised cosine logits, .npy labels == text
labels; and a training step runs under bf16 autocast on CPU."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fairseq.data.dictionary import Dictionary
from tiny_models import WEIGHTS, music_sample as _sample, tiny_criterion as _criterion, tiny_model

from mert_fairseq.perf.reference import ReferenceCriterion, build_nnaudio_cqt, direct_cosine_logits, reference_formulation
from mert_fairseq.perf.synthetic_corpus import music_like
from mert_fairseq.prep.labels_npy import labels_to_npy
from mert_fairseq.models.teachers.cqt import CQTTeacher, SpectralCQT, build_cqt
from mert_fairseq.models.masked_prediction import batched_cosine_logits
from mert_fairseq.models.transformer_encoder import SelfAttention

SR = 24000


# ------------------------------------------------------------------------------------------ attention
@pytest.mark.parametrize("with_padding", [False, True])
def test_sdpa_attention_equals_fairseq_multihead_attention(with_padding):
    from fairseq.modules import MultiheadAttention

    torch.manual_seed(0)
    B, T, D, H = 3, 23, 64, 4
    ours = SelfAttention(D, H, dropout=0.0).eval()
    ref = MultiheadAttention(D, H, dropout=0.0, self_attention=True).eval()
    ref.load_state_dict(ours.state_dict())  # same parameter names
    x = torch.randn(B, T, D, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    mask = None
    if with_padding:
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[1, 15:] = True
        mask[2, 5:] = True
    out = ours(x, mask)
    out_ref, _ = ref(x_ref.transpose(0, 1), x_ref.transpose(0, 1), x_ref.transpose(0, 1), key_padding_mask=mask,
                     need_weights=False)
    out_ref = out_ref.transpose(0, 1)
    assert (out - out_ref).abs().max() < 1e-5
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (out_ref * g).sum().backward()
    assert (x.grad - x_ref.grad).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------ CQT
def _signals(L: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    clicks = np.zeros(L, np.float32)
    clicks[:: SR // 4] = 1.0
    return torch.from_numpy(np.stack([
        music_like(L, SR, rng),
        0.1 * rng.standard_normal(L).astype(np.float32),
        clicks + 0.1 * music_like(L, SR, rng),
    ]))


# Stated tolerance: max |ours - nnAudio| <= 2e-5 x the largest magnitude of the batch. nnAudio's own
# fp32 conv is ~1e-5 off an fp64 evaluation of its kernels; ours is ~1e-6 off it (checked below).
CQT_REL_TOL = 2e-5


@pytest.mark.parametrize("n_bins, L", [(336, SR), (84, 2 * SR + 123)])
def test_spectral_cqt_equals_nnaudio_cqt1992v2(n_bins, L):
    x = _signals(L)
    ours = build_cqt(SR, 320, n_bins)
    ref = build_nnaudio_cqt(SR, 320, n_bins)
    with torch.no_grad():
        expected = ref(x)
    got = ours(x)
    assert got.shape == expected.shape == (3, n_bins, L // 320 + 1)
    assert got.dtype == torch.float32
    err = (got - expected).abs().amax(dim=(1, 2)) / expected.abs().amax(dim=(1, 2))
    assert err.max() < CQT_REL_TOL, err


def test_spectral_cqt_close_to_fp64_reference_and_cached_per_grid():
    x = _signals(SR // 2 + 77)
    ref = build_nnaudio_cqt(SR, 320, 84).double()
    with torch.no_grad():
        expected = ref(x.double())
    ours = build_cqt(SR, 320, 84)
    got = ours(x).double()
    assert ((got - expected).abs().max() / expected.abs().max()) < 5e-6
    ours(x[:, :-400])  # another length: a second grid
    ours(x[:1, 10:])  # same grid as the first call (lengths round up to the same FFT size)
    assert len(ours._cache) == 2
    assert isinstance(ours, SpectralCQT) and not list(ours.state_dict())  # nothing in checkpoints


def test_cqt_teacher_targets_under_autocast_are_fp32():
    teacher = CQTTeacher(16, 84, SR, 75, align_to_cnn=True)
    wav = _signals(SR)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t = teacher.targets(wav, 74)
    assert t.dtype == torch.float32 and t.shape == (3, 74, 84)
    assert set(teacher.state_dict()) == {"fc.weight", "fc.bias"}


# ------------------------------------------------------------------------------------------ logits
def test_batched_logits_equal_the_original_direct_formulation():
    """The mert criterion's logits (`batched_cosine_logits`, all classes) in the original's S x (1 + C) layout
    (column 0 the target, its own column -inf) equal the reference's materialised `direct_cosine_logits`,
    values and gradients within 1e-5."""
    torch.manual_seed(0)
    S, C, F_ = 57, 40, 16
    proj = torch.randn(S, F_, requires_grad=True)
    embs = torch.rand(C, F_, requires_grad=True)
    targets = torch.randint(0, C, (S,))
    cos = batched_cosine_logits(proj[None], embs[None], 10.0)[0]  # S x C
    index = targets.unsqueeze(1)
    fast = torch.cat([cos.gather(1, index), cos.scatter(1, index, float("-inf"))], dim=1)
    proj2, embs2 = proj.detach().clone().requires_grad_(True), embs.detach().clone().requires_grad_(True)
    slow = direct_cosine_logits(proj2, embs2, targets, 10.0)
    assert fast.shape == slow.shape == (S, 1 + C)
    assert torch.equal(torch.isinf(fast), torch.isinf(slow))
    finite = torch.isfinite(slow)
    assert (fast[finite] - slow[finite]).abs().max() < 1e-5
    y = torch.zeros(S, dtype=torch.long)
    torch.nn.functional.cross_entropy(fast, y).backward()
    torch.nn.functional.cross_entropy(slow, y).backward()
    assert (proj.grad - proj2.grad).abs().max() < 1e-5
    assert (embs.grad - embs2.grad).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------ labels
def _label_corpus(root):
    """7 clips of varied length (one too short, dropped), 2 label streams, text labels."""
    import soundfile as sf

    rng = np.random.default_rng(1)
    lengths = [12000, 30000, 2000, 24000, 17777, 40000, 25600]
    rows = []
    streams = {"a": [], "b": []}
    for i, n in enumerate(lengths):
        sf.write(root / f"c{i}.wav", music_like(n, SR, rng), SR, subtype="FLOAT")
        rows.append(f"c{i}.wav\t{n}")
        frames = math.ceil(n / 320)
        streams["a"].append(" ".join(map(str, rng.integers(0, 50, frames))))
        streams["b"].append(" ".join(map(str, rng.integers(0, 1024, frames))))
    (root / "train.tsv").write_text(f"{root}\n" + "\n".join(rows) + "\n")
    for name, lines in streams.items():
        (root / f"train.{name}").write_text("\n".join(lines) + "\n")
        (root / f"dict.{name}.txt").write_text("".join(f"{c} 1\n" for c in range(1024 if name == "b" else 50)))
    return list(streams)


def test_npy_labels_give_identical_batches(tmp_path):
    from mert_fairseq.data.mert_dataset import MERTDataset

    streams = _label_corpus(tmp_path)
    for s in streams:
        out = labels_to_npy(tmp_path / f"train.{s}")
        assert out == tmp_path / f"train.{s}.npy"
        arr = np.load(out)
        assert arr.dtype == np.int16 and arr.shape == (7, 125) and (arr[2, 7:] == -1).all()
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind
    dicts = [Dictionary.load(str(tmp_path / f"dict.{s}.txt")) for s in streams]

    def dataset(memmap):
        return MERTDataset(str(tmp_path / "train.tsv"), SR, [str(tmp_path / f"train.{s}") for s in streams], 75, dicts,
                           min_keep_sample_size=4000, max_sample_size=20000, store_labels=False,
                           numpy_memmap_label=memmap, random_crop=True)

    text, npy = dataset(False), dataset(True)
    assert len(text) == len(npy) == 6
    for ids in ([0, 1], [2, 3, 4], [5, 0, 3], list(range(6))):
        a, b = text.collater([text[i] for i in ids]), npy.collater([npy[i] for i in ids])
        assert torch.equal(a["net_input"]["source"], b["net_input"]["source"])
        assert a["ntokens_list"] == b["ntokens_list"]
        for ta, tb in zip(a["target_list"] + a["target_lengths_list"], b["target_list"] + b["target_lengths_list"]):
            assert torch.equal(ta, tb)


def test_labels_to_npy_int32_and_cli(tmp_path):
    from mert_fairseq.prep.labels_npy import main

    (tmp_path / "x.lab").write_text("1 2 3\n40000\n\n5 6\n")
    assert main([str(tmp_path / "x.lab")]) == 0
    arr = np.load(tmp_path / "x.lab.npy")
    assert arr.dtype == np.int32
    assert arr.tolist() == [[1, 2, 3], [40000, -1, -1], [-1, -1, -1], [5, 6, -1]]
    (tmp_path / "bad.lab").write_text("1 -2\n")
    with pytest.raises(ValueError, match="negative"):
        labels_to_npy(tmp_path / "bad.lab")


# ------------------------------------------------------------------------------------------ bf16 / reference
def test_training_step_under_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    model = tiny_model("rvq_95m").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, sample_size, log = _criterion()(model, _sample(model))
    assert torch.isfinite(loss) and sample_size > 0 and math.isfinite(float(log["loss_cqt_pred_m"]))
    (loss / sample_size).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize("bf16", [False, True])
def test_task_bf16_autocast_runs_fairseqs_step_with_the_forward_under_autocast(tone_data, bf16):
    """task.bf16_autocast: fairseq's trainer step and valid step run the model's forward under bf16 autocast
    and the backward outside it; off, nothing runs under autocast."""
    from mert_fairseq.perf.training_setup import batch, build_trainer, compose_config

    cfg = compose_config("MERT_demo_cpu", ["model.encoder_layers=1", f"task.bf16_autocast={str(bf16).lower()}"])
    trainer = build_trainer(cfg, tone_data["data"], tone_data["labels"], label_dir=tone_data["label_dir"])
    model, seen = trainer.model, []
    model.encoder.register_forward_hook(lambda m, a, out: seen.append(("forward", torch.is_autocast_enabled("cpu"))))
    model.encoder.layers[0].fc1.weight.register_hook(
        lambda g: seen.append(("backward", torch.is_autocast_enabled("cpu"))))
    sample = batch(trainer.task.dataset("train"), [0, 1])
    log = trainer.train_step([sample])
    assert seen == [("forward", bf16), ("backward", False)] and math.isfinite(log["loss"])
    trainer.valid_step(sample)
    assert seen[-1] == ("forward", bf16)


def test_reference_formulation_same_loss_and_restores_model():
    """The reference (hubert's criterion on the original's logits, nnAudio CQT, fairseq attention) gives the
    mert criterion's loss within 1e-4 relative (fp32; the CQTs differ within their tolerance) with the
    same masks, and the model is restored afterwards."""
    from mert_fairseq.models.teachers.cqt import SpectralCQT

    model = tiny_model("rvq_95m").train()
    sample = _sample(model)  # the same draws (masks, noise mixture) for both formulations
    ours, n_ours, _ = _criterion()(model, sample)
    with reference_formulation(model):
        assert type(model.encoder.layers[0].self_attn).__name__ == "_FairseqAttention"
        ref, n_ref, _ = ReferenceCriterion(None, **WEIGHTS)(model, sample)
    assert n_ours == n_ref
    assert abs(ours.item() - ref.item()) <= 1e-4 * abs(ours.item())
    assert isinstance(model.encoder.layers[0].self_attn, SelfAttention)
    assert isinstance(model.encoder_cqt_model.spec_layer, SpectralCQT)
    assert set(model.state_dict()) == set(tiny_model("rvq_95m").state_dict())


def test_benchmark_smoke(tmp_path, capsys):
    """scripts/benchmark.py's main on a 1-layer demo model: the JSON's derived figures follow from its raw
    step times (medians, ratios, throughput), the phase split is non-negative with the nested CNN/encoder/CQT
    phases inside the forward, the printed table shows the JSON's numbers, and the FLOPs of the 2-clip step
    are twice those of one clip of the same length (`flops_per_audio_second`) within 1 % (only the masked
    frames' logits, a few per mille of the step, depend on the drawn masks)."""
    import json
    import statistics

    from mert_fairseq.perf.step_benchmark import flops_per_audio_second, main
    from mert_fairseq.perf.training_setup import compose_config
    from mert_fairseq.perf.timing import PHASES

    overrides = ["model.encoder_layers=1", "model.audio_cqt_bins=84"]
    out = tmp_path / "bench.json"
    assert main(["--config", "MERT_demo_cpu", "--device", "cpu", "--batch-size", "2", "--seconds", "1",
                 "--warmup", "0", "--steps", "3", "--split-steps", "1", "--skip-data-prep", "--skip-cqt",
                 "--codes", "100", *[a for o in overrides for a in ("-o", o)], "--out", str(out)]) == 0
    table = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"ours", "reference"}
    for mode in ("ours", "reference"):
        r = res["results"][mode]
        assert r["step_s"] > 0 and r["audio_seconds_per_s"] > 0 and r["peak_memory_mb"] > 0
        assert set(r["split_s"]) >= {"cqt_teacher", "cnn", "encoder", "heads_loss", "backward", "optimizer"}
        assert len(r["step_times_s"]) == 3 and r["step_s"] == statistics.median(r["step_times_s"])
        assert r["updates_per_s"] == pytest.approx(1 / r["step_s"], rel=1e-12)
        assert r["audio_seconds_per_s"] == pytest.approx(2 * 1.0 / r["step_s"], rel=1e-12)
        assert r["tflops_per_s"] == pytest.approx(res["flops_per_step"] / r["step_s"] / 1e12, rel=1e-12)
        assert all(r["split_s"][k] >= 0 for k in PHASES), r["split_s"]  # heads_loss = forward - nested phases
    ours, ref = res["results"]["ours"], res["results"]["reference"]
    speed = res["speedup_ours_vs_reference"]
    pairs = [b / a for a, b in zip(ours["step_times_s"], ref["step_times_s"])]
    assert speed["step_ratios"] == pytest.approx(pairs, rel=1e-12)
    assert speed["median_of_step_ratios"] == pytest.approx(statistics.median(pairs), rel=1e-12)
    assert speed["ratio_of_medians"] == pytest.approx(ref["step_s"] / ours["step_s"], rel=1e-12)
    assert min(pairs) <= speed["median_of_step_ratios"] <= max(pairs)
    # the table prints the JSON's figures
    assert f"| step (median) s | {ours['step_s']:.3f} | {ref['step_s']:.3f} |" in table
    assert f"| updates/s | {ours['updates_per_s']:.3f} | {ref['updates_per_s']:.3f} |" in table
    for k in PHASES:
        assert f"| {k} s | {ours['split_s'][k]:.3f} | {ref['split_s'][k]:.3f} |" in table
    assert (f"ours vs reference: {speed['median_of_step_ratios']:.2f}x (median of interleaved step ratios), "
            f"{speed['ratio_of_medians']:.2f}x (ratio of medians)") in table
    assert f"FLOPs per step (forward + backward): {res['flops_per_step'] / 1e9:.1f} GFLOP" in table
    # FLOPs: linear in the batch
    one_clip = flops_per_audio_second(compose_config("MERT_demo_cpu", overrides), 1.0, n_codes=100)
    assert res["flops_per_step"] == pytest.approx(2 * one_clip, rel=0.01), (res["flops_per_step"], one_clip)
    assert res["flops_per_audio_second"] == pytest.approx(res["flops_per_step"] / 2.0, rel=1e-12)


# ------------------------------------------------------------------------------------------ optimizer
def _adam_cfg(**extra):
    from omegaconf import OmegaConf

    return OmegaConf.create({"adam_betas": "(0.9, 0.98)", "adam_eps": 1e-6, "weight_decay": 0.01, "lr": [1e-3],
                             **extra})


@pytest.mark.parametrize("implementation,dtype", [("foreach", torch.float64), ("for_loop", torch.float64),
                                                  ("foreach", torch.float32)])
def test_adamw_torch_matches_fairseq_adam(implementation, dtype):
    """Same update as fairseq's adam (decoupled weight decay, eps placement) over 5 steps, gradients
    from 1e-7 to 1e-1 (so eps = 1e-6 matters for some). In fp64 the parameter changes agree to 1e-9
    relative (the same formula); in fp32 the parameters agree to 2e-6 (a few ulps of rounding per step,
    lr = 1e-3). A state-dict round trip keeps the step count."""
    from fairseq.optim.adam import FairseqAdam

    from mert_fairseq.optim.adamw_torch import AdamWTorch

    torch.manual_seed(0)
    shapes = [(64, 32), (32,), (5, 7, 3)]
    p_ref = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    p_new = [p.detach().clone().requires_grad_(True) for p in p_ref]
    start = [p.detach().clone() for p in p_ref]
    ref = FairseqAdam(_adam_cfg(use_old_adam=False, fp16_adam_stats=False, tpu=False), p_ref)
    new = AdamWTorch(_adam_cfg(implementation=implementation), p_new)
    for step in range(5):
        grads = [(torch.randn(s) * 10.0 ** torch.randint(-7, 0, s)).to(dtype) for s in shapes]
        for params, opt in ((p_ref, ref), (p_new, new)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
            opt.zero_grad()
    for a, b, s in zip(p_ref, p_new, start):
        if dtype == torch.float64:
            assert torch.allclose(a.detach() - s, b.detach() - s, rtol=1e-9, atol=1e-15)
        else:
            assert torch.allclose(a, b, rtol=0, atol=2e-6)
    assert new.optimizer.defaults["foreach"] == (implementation == "foreach")
    again = AdamWTorch(_adam_cfg(implementation=implementation), p_new)
    again.load_state_dict(new.state_dict())
    assert again._num_steps == 5


def test_adamw_torch_is_registered_and_handles_flat_params():
    from fairseq.optim import OPTIMIZER_REGISTRY

    from mert_fairseq.optim.adamw_torch import AdamWTorch

    assert OPTIMIZER_REGISTRY["adamw_torch"] is AdamWTorch
    flat = torch.zeros(100, requires_grad=True)  # what fairseq's FP16Optimizer hands over
    opt = AdamWTorch(_adam_cfg(implementation="auto"), [flat])
    assert opt.supports_flat_params and opt.optimizer.defaults["betas"] == (0.9, 0.98)
    flat.grad = torch.ones(100)
    opt.step()
    assert torch.allclose(flat.detach(), torch.full((100,), -1e-3), atol=1e-7)  # Adam's first step = -lr
    with pytest.raises(ValueError, match="optimizer.implementation"):
        AdamWTorch(_adam_cfg(implementation="fast"), [torch.zeros(1, requires_grad=True)])


# ------------------------------------------------------------------------------------------ host syncs
def test_all_false_padding_mask_gives_the_same_loss_and_gradients_as_before():
    """An all-False padding mask (cropped batches) acts as no mask: attention without a mask, the same
    draws; the loss and gradients equal those of the batch without a padding mask."""
    model = tiny_model("rvq_95m").train()
    sample = _sample(model)
    crit = _criterion()
    losses, grads = [], []
    for all_false in (True, False):
        model.zero_grad()
        model.set_num_updates(0)
        torch.manual_seed(0)
        sample["net_input"]["padding_mask"] = (torch.zeros_like(sample["net_input"]["source"], dtype=torch.bool)
                                               if all_false else None)
        loss, n, _ = crit(model, sample)
        (loss / n).backward()
        losses.append(loss.item())
        grads.append(model.encoder.layers[0].fc1.weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-7, rtol=1e-5)


# ------------------------------------------------------------------------------------------ FLOPs / MFU
def test_flop_count_of_attention_is_the_textbook_count():
    from mert_fairseq.perf.mfu import count_step_flops

    B, T, D, H = 2, 10, 32, 4
    attn = SelfAttention(D, H, dropout=0.0).eval()
    x = torch.randn(B, T, D)
    with torch.no_grad():
        flops = count_step_flops(lambda: attn(x, None))
    assert flops == 4 * 2 * B * T * D * D + 2 * 2 * B * T * T * D  # 4 projections + QK^T + AV
    lin = torch.nn.Linear(D, 16)
    x.requires_grad_(True)
    assert count_step_flops(lambda: lin(x).sum().backward()) == 3 * 2 * B * T * D * 16  # fwd + 2 bwd GEMMs


def test_train_log_parsing_simple_and_json(tmp_path):
    from mert_fairseq.perf.mfu import parse_train_inner, read_train_log, train_log_report

    simple = ("[2026-11-27 09:15:50,730][train_inner][INFO] - epoch 001:      2 / 2 loss=7.176, ppl=144.65, "
              "wps=98.6, ups={ups}, wpb=640, bsz=16, num_updates={n}, lr=5e-05, gnorm=3.879, train_wall=6, wall=19")
    json_line = ('[2026-11-27 09:15:50,730][train_inner][INFO] - {{"epoch": 1, "update": 0.5, "loss": "7.1", '
                 '"ups": "{ups}", "bsz": "16", "num_updates": "{n}", "lr": "5e-05", "wall": "19"}}')
    rec = parse_train_inner(simple.format(ups=2.5, n=10))
    assert rec["ups"] == 2.5 and rec["bsz"] == 16 and rec["num_updates"] == 10 and rec["lr"] == 5e-05
    assert parse_train_inner(json_line.format(ups=2.5, n=10))["bsz"] == 16
    assert parse_train_inner("[..][valid][INFO] - valid on 'valid' subset | loss 4.2") is None
    for fmt in (simple, json_line):
        log = tmp_path / "train.log"
        lines = [fmt.format(ups=u, n=100 * (i + 1)) for i, u in enumerate([0.5, 2.0, 2.2, 2.1])]
        log.write_text("\n".join(["[..][fairseq_cli.train][INFO] - start"] + lines + ["done training"]) + "\n")
        recs = read_train_log(log)
        rep = train_log_report(recs, clip_seconds=5.0, flops_per_audio_second=73e9, peak=989.0, skip=1)
        assert rep["updates_per_s"] == 2.1 and rep["steady_intervals"] == 3 and rep["first_update"] == 200
        assert rep["audio_seconds_per_s"] == pytest.approx(2.1 * 16 * 5.0)
        assert rep["mfu"] == pytest.approx(2.1 * 16 * 5.0 * 73e9 / 989e12)
    (tmp_path / "empty.log").write_text("nothing here\n")
    with pytest.raises(ValueError, match="empty.log: no train_inner lines"):
        read_train_log(tmp_path / "empty.log")


def test_benchmark_train_log_mode_counts_flops_of_the_config(tmp_path, capsys):
    from mert_fairseq.perf.step_benchmark import main

    log = tmp_path / "hydra_train.log"
    log.write_text("".join(
        f"[x][train_inner][INFO] - epoch 001: {i} / 9 loss=6.9, ups=0.5, bsz=8, num_updates={i}, wall={2 * i}\n"
        for i in range(1, 5)))
    out = tmp_path / "log.json"
    assert main(["--config", "MERT_demo_cpu", "--train-log", str(log), "--peak-tflops", "1.0",
                 "--out", str(out)]) == 0
    import json

    res = json.loads(out.read_text())
    assert res["clip_seconds"] == 2.0 and res["audio_seconds_per_s"] == pytest.approx(0.5 * 8 * 2.0)
    assert 1e8 < res["flops_per_audio_second"] < 1e11  # tiny demo model
    assert res["mfu"] == pytest.approx(res["audio_seconds_per_s"] * res["flops_per_audio_second"] / 1e12)
    assert "MFU" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ bf16 weights
@pytest.mark.slow
def test_fairseq_bf16_weights_with_fp32_master_and_adamw_torch_train_end_to_end(tone_data, tmp_path):
    """common.bf16=true (bf16 weights and activations, fp32 master weights in fairseq's FP16Optimizer)
    with optimizer adamw_torch through fairseq-hydra-train on CPU: the first update's loss is within
    1% of the fp32 run's, and the optimizer state advanced."""
    from training_runs import metric, train

    from mert_fairseq.checkpoint.safe_load import load_checkpoint_state

    common = ["dataset.disable_validation=true", "common.log_interval=1", "optimizer._name=adamw_torch"]
    bf16 = train(tone_data, tmp_path / "bf16", "optimization.max_update=2", "common.bf16=true", *common)
    fp32 = train(tone_data, tmp_path / "fp32", "optimization.max_update=1", *common)
    loss_bf16, loss_fp32 = metric(bf16, "train_inner", "loss"), metric(fp32, "train_inner", "loss")
    assert len(loss_bf16) == 2 and all(math.isfinite(x) for x in loss_bf16)
    assert loss_bf16[0] == pytest.approx(loss_fp32[0], rel=0.01)
    state = load_checkpoint_state(tmp_path / "bf16" / "checkpoints" / "checkpoint_last.pt")
    assert state["optimizer_history"][-1]["optimizer_name"] == "FP16Optimizer"
    steps = {float(s["step"]) for s in state["last_optimizer_state"]["state"].values()}
    assert steps == {2.0}
