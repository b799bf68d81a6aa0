"""GPU checks (`pytest -m gpu`; skipped without CUDA): fp16 and bf16 training steps with finite loss and
loss scaling, adamw_torch's fused kernel against fairseq's adam, a fairseq-hydra-train run with
DataLoader workers (pin_memory active) that exits within 10 s of its last log line; fairseq's own fp16
path (online probes and validation under common.fp16, the loss scale falling on a forced overflow, the stop
at min_loss_scale); FSDP (fairscale, world size 1, tiny widths, with and without cpu_offload: trains, saves,
resumes exactly, weights equal to DDP's within 1e-5 after 10 updates, converts to HF)."""
import math

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _to_cuda(x):
    """A fairseq sample (nested dicts/lists of tensors and Nones) moved to the GPU."""
    if isinstance(x, dict):
        return {k: _to_cuda(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_to_cuda(v) for v in x]
    return x.cuda() if torch.is_tensor(x) else x


def expected_loss_scale(scaler: "torch.amp.GradScaler", init_scale: float, overflows) -> float:
    """The scale GradScaler must hold after steps with these overflow flags, from its settings: an overflow
    multiplies by the backoff factor and restarts the count; `growth_interval` clean steps in a row multiply
    by the growth factor."""
    scale, clean = init_scale, 0
    for overflow in overflows:
        clean = 0 if overflow else clean + 1
        if overflow:
            scale *= scaler.get_backoff_factor()
        elif clean == scaler.get_growth_interval():
            scale, clean = scale * scaler.get_growth_factor(), 0
    return scale


def _step(dtype, steps: int = 3):
    """`steps` updates of a tiny model under autocast; fp16 with a GradScaler that grows every 2 clean steps."""
    from tiny_models import tiny_criterion as _criterion, tiny_model, music_sample as _sample

    torch.manual_seed(0)
    model = tiny_model("rvq_95m").cuda().train()
    sample = _to_cuda(_sample(model))
    init_scale = 2.0 ** 16
    scaler = (torch.amp.GradScaler("cuda", init_scale=init_scale, growth_interval=2)
              if dtype == torch.float16 else None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    overflows = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=dtype):
            loss, n, _ = _criterion()(model, sample)
        assert math.isfinite(loss.item()) and n > 0
        (scaler.scale(loss / n) if scaler else loss / n).backward()
        if scaler:
            # a non-finite scaled gradient is what GradScaler counts as an overflow (it skips the step)
            overflows.append(not all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None))
            scaler.step(opt)
            scaler.update()
            assert scaler.get_scale() == expected_loss_scale(scaler, init_scale, overflows), overflows
        else:
            opt.step()
        opt.zero_grad()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_training_step_on_gpu(dtype):
    _step(dtype)


def test_fused_adamw_torch_matches_fairseq_adam_on_gpu():
    from omegaconf import OmegaConf
    from fairseq.optim.adam import FairseqAdam

    from mert_fairseq.optim.adamw_torch import AdamWTorch

    cfg = dict(adam_betas="(0.9, 0.98)", adam_eps=1e-6, weight_decay=0.01, lr=[1e-3])
    torch.manual_seed(0)
    p_ref = [torch.randn(256, 64, device="cuda", requires_grad=True)]
    p_new = [p_ref[0].detach().clone().requires_grad_(True)]
    ref = FairseqAdam(OmegaConf.create({**cfg, "use_old_adam": False, "fp16_adam_stats": False, "tpu": False}), p_ref)
    new = AdamWTorch(OmegaConf.create({**cfg, "implementation": "auto"}), p_new)
    assert new.optimizer.defaults["fused"]
    for _ in range(5):
        g = torch.randn(256, 64, device="cuda") * 1e-2
        for params, opt in ((p_ref, ref), (p_new, new)):
            params[0].grad = g.clone()
            opt.step()
            opt.zero_grad()
    assert torch.allclose(p_ref[0], p_new[0], rtol=0, atol=2e-6)


def test_training_run_with_workers_exits_within_10s_on_gpu(tone_data, tmp_path):
    import sys

    from training_runs import WORKER_RUN_OVERRIDES, run_and_time_exit, train_command

    # fairseq-hydra-train's own entry point (no test wrapper); `-m` also works where its console script
    # is not beside sys.executable (an image's python with packages under PYTHONPATH)
    cmd = train_command(tone_data, tmp_path / "run", *WORKER_RUN_OVERRIDES, "common.cpu=false", "common.fp16=true",
                        program=(sys.executable, "-m", "fairseq_cli.hydra_train"))
    rc, out, delay = run_and_time_exit(cmd)
    assert rc == 0, out[-3000:]
    assert "done training" in out and "shut down 2 data loader(s)" in out
    assert delay < 10.0, f"exited {delay:.1f}s after the last log line"


# ---------------------------------------------------------------- fairseq's own fp16 path (FP16Optimizer)
def _train_gpu(data, run_dir, *overrides, env=None):
    from mert_fairseq.common.recipes import child_pythonpath
    from mert_fairseq.testing import fault_train
    from training_runs import TRAIN, run_training

    # the fault-injection entry point when a test arms a hook (MERT_FAULT_NAN_UPDATES), else fairseq's
    program = fault_train.command() if env else [TRAIN]
    return run_training(data, run_dir, "common.cpu=false", "common.fp16=true", "common.log_interval=1", *overrides,
                        program=program, env={"PYTHONPATH": child_pythonpath(), **(env or {})}, timeout=600)


def test_fp16_run_probes_and_validates_on_gpu(tone_data, tmp_path):
    from mert_fairseq.prep.demo_corpus import make_demo_corpus
    from training_runs import metric

    make_demo_corpus(tmp_path / "probe", num_clips=8, seconds=2.0, seed=1)
    rc, log = _train_gpu(tone_data, tmp_path / "run", f"task.probe_csv={tmp_path / 'probe' / 'metadata.csv'}",
                         "task.probe_interval_updates=2", "++task.probe_folds=2", "optimization.max_update=3",
                         "dataset.validate_interval_updates=2")
    assert rc == 0, log[-3000:]
    assert len(metric(log, "train_inner", "probe_timbre")) == 3 and log.count("online probe (") == 2
    assert all(math.isfinite(v) for v in metric(log, "valid", "loss"))


def test_fp16_loss_scale_falls_on_a_forced_overflow_on_gpu(tone_data, tmp_path):
    """A NaN batch at update 3 (fault harness): the scaler halves the scale, skips it, and training goes on."""
    from training_runs import metric

    rc, log = _train_gpu(tone_data, tmp_path / "run", "optimization.max_update=5", "common.fp16_init_scale=128",
                         "dataset.disable_validation=true", env={"MERT_FAULT_NAN_UPDATES": "2"})
    assert rc == 0, log[-3000:]
    assert "gradient overflow detected, ignoring gradient, setting loss scale to: 64.0" in log
    scales = metric(log, "train_inner", "loss_scale")
    assert scales[0] == 128 and scales[-1] == 64, scales
    assert metric(log, "train_inner", "num_updates")[-1] == 5


def test_fp16_run_stops_at_min_loss_scale_on_gpu(tone_data, tmp_path):
    """NaN batches again and again: 4 -> 2 -> 1 -> 0.5 = min_loss_scale, and the run stops with fairseq's
    error (exit 1, a crash.pt beside the checkpoints), not a hang or a silent NaN model."""
    rc, log = _train_gpu(tone_data, tmp_path / "run", "optimization.max_update=5", "common.fp16_init_scale=4",
                         "common.min_loss_scale=0.5", "dataset.disable_validation=true",
                         env={"MERT_FAULT_NAN_UPDATES": "1,1,1,1,1,1"})
    assert rc == 1, log[-3000:]
    assert "setting loss scale to: 2.0" in log and "setting loss scale to: 1.0" in log
    assert "Minimum loss scale reached (0.5)" in log
    assert (tmp_path / "run" / "checkpoints" / "crash.pt").is_file()


# ---------------------------------------------------------------- FSDP (fairscale), world size 1, tiny widths
FSDP_COMMON = ["common.fp16=false", "dataset.disable_validation=true", "checkpoint.save_interval_updates=5",
               "dataset.max_tokens=192000", "lr_scheduler.warmup_updates=4", "+lr_scheduler.total_num_update=10"]


def _weights(run_dir):
    from mert_fairseq.checkpoint.safe_load import load_checkpoint_state

    state = load_checkpoint_state(run_dir / "checkpoints" / "checkpoint_last.pt")
    return state["optimizer_history"][-1]["num_updates"], {k: v.float() for k, v in state["model"].items()}


def _max_diff(a, b):
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())[:10]
    return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].numel())


@pytest.fixture(scope="module")
def ddp_reference(tone_data, tmp_path_factory):
    from training_runs import metric

    run = tmp_path_factory.mktemp("ddp") / "run"
    rc, log = _train_gpu(tone_data, run, *FSDP_COMMON, "distributed_training.ddp_backend=legacy_ddp",
                         "optimization.max_update=10")
    assert rc == 0, log[-3000:]
    return metric(log, "train_inner", "loss"), _weights(run)[1]


@pytest.mark.parametrize("offload", [False, True], ids=["fsdp", "fsdp_cpu_offload"])
def test_fsdp_trains_saves_resumes_exactly_and_matches_ddp_on_gpu(offload, tone_data, ddp_reference, tmp_path):
    from mert_fairseq.export.convert import convert_checkpoint
    from training_runs import metric

    fsdp = [*FSDP_COMMON, "distributed_training.ddp_backend=fully_sharded",
            f"distributed_training.cpu_offload={str(offload).lower()}"]
    rc, log = _train_gpu(tone_data, tmp_path / "straight", *fsdp, "optimization.max_update=10")
    assert rc == 0, log[-3000:]
    assert "FullyShardedDataParallel(" in log  # fairseq logs the wrapped model
    losses = metric(log, "train_inner", "loss")
    ddp_losses, ddp_weights = ddp_reference
    assert len(losses) == len(ddp_losses) == 10
    assert max(abs(a - b) for a, b in zip(losses, ddp_losses)) <= 1e-3 + 1e-5  # logged with 3 decimals
    updates, weights = _weights(tmp_path / "straight")
    assert updates == 10 and _max_diff(weights, ddp_weights) <= 1e-5  # consolidated checkpoint = DDP's weights
    # stop at 5, resume to 10: the same weights as without the stop
    for max_update in (5, 10):
        rc, log = _train_gpu(tone_data, tmp_path / "resumed", *fsdp, f"optimization.max_update={max_update}")
        assert rc == 0, log[-3000:]
    assert "@ 5 updates" in log
    assert _max_diff(_weights(tmp_path / "resumed")[1], weights) == 0.0
    result = convert_checkpoint(tmp_path / "straight" / "checkpoints" / "checkpoint_last.pt", tmp_path / "hf")
    assert all(c["max_abs_diff"] < 1e-4 for c in result["report"]["checks"])
