"""GPU checks (`pytest -m gpu`; skipped without CUDA): fp16 and bf16 training steps with finite loss and
loss scaling, adamw_torch's fused kernel against fairseq's adam, and a fairseq-hydra-train run with
DataLoader workers (pin_memory active) that exits within 10 s of its last log line."""
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
    from test_speedups import _criterion, _sample
    from tiny_models import tiny_model

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
    from test_exit import run_and_time_exit, train_cmd

    # fairseq-hydra-train's own entry point (no test wrapper); `-m` also works where its console script
    # is not beside sys.executable (an image's python with packages under PYTHONPATH)
    cmd = train_cmd(tone_data, tmp_path / "run", "common.cpu=false", "common.fp16=true",
                    python_args=("-m", "fairseq_cli.hydra_train"))
    rc, out, delay = run_and_time_exit(cmd)
    assert rc == 0, out[-3000:]
    assert "done training" in out and "shut down 2 data loader(s)" in out
    assert delay < 10.0, f"exited {delay:.1f}s after the last log line"
