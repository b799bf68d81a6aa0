"""The training step built for a GPU, checked on the CPU: criterion `mert` computes the original's loss (fairseq's
hubert criterion on the S x (1 + C) logits, `perf.reference.ReferenceCriterion`); the step's
random draws come from the collater (seeded, fixed shapes); the step runs no data-dependent op and compiles
as one graph reused across batches with different masks."""
from __future__ import annotations

import math
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from fairseq.criterions.hubert_criterion import HubertCriterion
from torch.utils._python_dispatch import TorchDispatchMode
from step_helpers import batch, build_recipe
from tiny_models import tiny_model, tiny_sample

from mert_fairseq.criterions.mert_criterion import MertCriterion
from mert_fairseq.data.step_draws import StepDraws, draw_for_batch
from mert_fairseq.perf.reference import ReferenceCriterion

RECIPES = ["MERT_RVQ-VAE_CQT_95M", "MERT_RVQ-VAE_CQT_330M"]
DATA_DEPENDENT = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique",
                  "aten._unique2", "aten.unique_consecutive", "aten.unique_dim", "aten.item", "aten.is_nonzero"}


class CountOps(TorchDispatchMode):
    """Counts every aten op run (forward and backward), and the boolean-mask indexing ones."""

    def __init__(self):
        super().__init__()
        self.ops, self.bool_index = {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.replace("::", ".")
        self.ops[name] = self.ops.get(name, 0) + 1
        if name in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"):
            indices = args[1] if len(args) > 1 else []
            self.bool_index += sum(1 for i in indices if torch.is_tensor(i) and i.dtype == torch.bool)
        return func(*args, **(kwargs or {}))

    def data_dependent(self) -> dict:
        found = {k: v for k, v in self.ops.items() if k in DATA_DEPENDENT}
        if self.bool_index:
            found["boolean-mask indexing"] = self.bool_index
        return found


# ------------------------------------------------------------------------------------------ criterion
def _sample(model, B=3, L=24000, seed=0):
    """Random audio and labels, with the step's draws made as the collater makes them."""
    g = torch.Generator().manual_seed(seed)
    targets = [torch.randint(4, n, (B, math.ceil(L / 320)), generator=g) for n in model.num_classes]
    return tiny_sample(model, torch.randn(B, L, generator=g), targets, seed=seed)


@pytest.mark.parametrize("family,extra", [
    ("rvq_95m", {}), ("rvq_330m", {}), ("kmeans", {"skip_nomask": False}),
    ("rvq_95m", {"learnable_temp": True, "mask_origin": 0.1, "mask_replace": 0.1, "encoder_layerdrop": 0.3}),
])
def test_mert_criterion_equals_the_reference_with_the_same_masks(family, extra):
    """Same draws (same seed) -> the mert criterion's loss and every logged value equal the reference's (hubert's
    criterion on the original's logits) within 1e-5 relative, every gradient within 1e-5 of its largest
    magnitude (other float summation orders)."""
    weights = dict(pred_masked_weight=1.0, pred_nomask_weight=0.5 if "skip_nomask" in extra else 0.0,
                   loss_weights=[10.0, 1.0])
    torch.manual_seed(0)
    model = tiny_model(family, **extra).train()
    sample = _sample(model)
    results = []
    for crit in (ReferenceCriterion(None, **weights), MertCriterion(None, **weights)):
        model.zero_grad()
        loss, n, log = crit(model, sample)
        loss.backward()
        results.append((loss.detach(), n, log, {k: p.grad.clone() for k, p in model.named_parameters()
                                                if p.grad is not None}))
    (lh, nh, logh, gh), (lm, nm, logm, gm) = results
    assert nh == nm and isinstance(nm, int) and nm > 0
    assert torch.allclose(lh, lm, rtol=1e-5, atol=1e-5), (lh, lm)
    assert set(logh) == set(logm)
    for k, v in logh.items():
        assert float(logm[k]) == pytest.approx(float(v), rel=1e-5, abs=1e-4), k
    assert set(gh) == set(gm)
    for k in gh:
        assert (gh[k] - gm[k]).abs().max() <= 1e-5 * gh[k].abs().max() + 1e-7, k


def test_the_hubert_criterion_name_builds_the_mert_criterion(tone_data):
    """Original YAMLs name `criterion: hubert`: the task builds the mert criterion from hubert's fields (an alias:
    one loss path), with the same loss and logs as `mert` on the same batch."""
    from omegaconf import OmegaConf

    task, model, _, ds = build_recipe("MERT_RVQ-VAE_CQT_95M", tone_data)
    fields = {"pred_masked_weight": 1.0, "pred_nomask_weight": 0.5, "loss_weights": [10.0, 1.0], "log_keys": []}
    hubert = task.build_criterion(OmegaConf.create({"_name": "hubert", **fields}))
    mert = task.build_criterion(OmegaConf.create({"_name": "mert", **fields}))
    assert type(hubert) is MertCriterion and type(mert) is MertCriterion
    assert (hubert.pred_masked_weight, hubert.pred_nomask_weight, hubert.loss_weights) == (1.0, 0.5, [10.0, 1.0])
    sample = batch(ds, [0, 1, 2, 3])
    model.train()
    results = []
    for crit in (hubert, mert):
        torch.manual_seed(0)  # same dropout
        results.append(crit(model, sample))
    (lh, nh, logh), (lm, nm, logm) = results
    assert torch.equal(lh, lm) and nh == nm > 0 and set(logh) == set(logm)
    assert all(float(logh[k]) == float(logm[k]) for k in logh), logh


def test_mert_criterion_logging_values_stay_on_the_device_and_reduce_like_hubert():
    from fairseq.logging import metrics

    model = tiny_model("rvq_95m").train()
    _, n, log = MertCriterion(None, 1.0, 0.0, [10.0, 1.0])(model, _sample(model))
    assert torch.is_tensor(log["loss"]) and torch.is_tensor(log["loss_m_0"]) and torch.is_tensor(log["correct_m_0"])
    assert isinstance(log["sample_size"], int) and log["count_m_0"] == n
    logs = [log, {k: (v * 2 if torch.is_tensor(v) else v) for k, v in log.items()}]
    got, want = {}, {}
    for reduce, into in ((MertCriterion.reduce_metrics, got), (HubertCriterion.reduce_metrics, want)):
        with metrics.aggregate(new_root=True) as agg:
            reduce(logs if into is got else [{k: float(v) if torch.is_tensor(v) else v for k, v in l.items()}
                                             for l in logs])
            into.update(agg.get_smoothed_values())
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5), k  # float32 device sums vs host doubles
    assert MertCriterion.logging_outputs_can_be_summed()


# ------------------------------------------------------------------------------------------ collater draws
def _same_draws(a: StepDraws, b: StepDraws) -> bool:
    """Equal draws: tensors element by element, host values (layerdrop flags' tuple, counts) with ==."""
    return all(torch.equal(x, y) if torch.is_tensor(x) else x == y
               for x, y in ((getattr(a, f.name), getattr(b, f.name)) for f in fields(StepDraws)))


@pytest.mark.parametrize("name", RECIPES)
def test_collater_draws_are_seeded_static_and_differ_between_batches(tone_data, name):
    task, model, criterion, ds = build_recipe(name, tone_data)
    assert task.draw_spec is not None and task.draw_spec.mask_prob == 0.8
    a, again, other = batch(ds, [0, 1, 2, 3]), batch(ds, [0, 1, 2, 3]), batch(ds, [4, 5, 6, 7])
    draws = a["net_input"]["draws"]
    assert isinstance(draws, StepDraws)
    B, T = 4, 74  # 24000 samples -> 74 CNN frames
    assert draws.mask.shape == (B, T) and draws.mask.dtype == torch.bool
    assert draws.masked_frames == int(draws.mask.sum()) > 0 and draws.valid_frames == B * T
    assert _same_draws(draws, again["net_input"]["draws"])  # same batch, same epoch: same draws
    assert not torch.equal(draws.mask, other["net_input"]["draws"].mask)
    if "95M" in name:
        assert draws.mix_len.shape == (B, 3) and draws.layer_keep.shape == (2,)
        assert draws.layer_keep_host == tuple(draws.layer_keep.tolist())  # the host copy eager steps read
    ds.set_epoch(2)
    assert not torch.equal(draws.mask, batch(ds, [0, 1, 2, 3])["net_input"]["draws"].mask)


def test_direct_calls_draw_with_the_collaters_function(tone_data):
    """Direct calls get their draws from `draw_for_batch`, the function the collater calls: the collater's
    draws equal a direct draw from the same seed; the masking law holds (80 % of frames start a 5-frame span)."""
    task, model, criterion, ds = build_recipe("MERT_RVQ-VAE_CQT_95M", tone_data)
    b = batch(ds, [0, 1, 2, 3])
    rng = np.random.default_rng([ds.seed, ds.epoch, 0, 1, 2, 3])
    direct = draw_for_batch(model.draw_spec(), rng, b["net_input"]["source"], b["net_input"]["padding_mask"],
                            min(t.size(1) for t in b["target_list"]))
    assert _same_draws(direct, b["net_input"]["draws"])
    spec = tiny_model("rvq_95m").draw_spec()
    source = torch.zeros(3, 24000)
    assert _same_draws(draw_for_batch(spec, np.random.default_rng(5), source),
                       draw_for_batch(spec, np.random.default_rng(5), source))
    frac = np.mean([draw_for_batch(spec, np.random.default_rng(s), source).masked_frames / (3 * 74)
                    for s in range(20)])
    assert 0.4 < frac < 0.95


@pytest.mark.parametrize("family", ["rvq_95m", "rvq_330m"])
def test_eager_step_skips_a_dropped_layer_with_the_same_loss_and_gradients(family):
    """Layerdrop: the eager step skips a dropped layer (host flags), the compiled formulation computes it and
    discards it (`torch.where`); same loss, same gradients, and the dropped layer's weights get zeros (not
    None: c10d DDP needs a gradient for every weight)."""
    torch.manual_seed(0)
    model = tiny_model(family, encoder_layers=3, encoder_layerdrop=0.5).train()
    sample = _sample(model)
    sample["net_input"]["draws"] = replace(sample["net_input"]["draws"], layer_keep=torch.tensor([True, False, True]),
                                           layer_keep_host=(True, False, True))
    results = []
    for skip in (True, False):
        model.encoder.skip_dropped_layers = skip
        model.zero_grad()
        with CountOps() as ops:
            loss, _, _ = MertCriterion(None, 1.0, 0.0, [10.0, 1.0])(model, sample)
            loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()},
                        ops.ops.get("aten.addmm", 0)))
    (ls, gs, mm_skip), (lw, gw, mm_where) = results
    assert mm_skip < mm_where  # the dropped layer's linears did not run
    assert torch.allclose(ls, lw, rtol=1e-6, atol=0), (ls, lw)
    assert set(gs) == set(gw)
    for k in gs:
        assert torch.allclose(gs[k], gw[k], rtol=1e-5, atol=1e-7), k
        if k.startswith("encoder.layers.1."):
            assert torch.count_nonzero(gs[k]) == 0, k


# ------------------------------------------------------------------------------------------ one graph
def _step(criterion, model, sample):
    loss, n, log = criterion(model, sample)
    (loss / n).backward()
    return loss


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_step_runs_no_data_dependent_op(tone_data, name):
    task, model, criterion, ds = build_recipe(name, tone_data)
    assert isinstance(criterion, MertCriterion)
    model.train()
    sample = batch(ds, [0, 1, 2, 3])
    _step(criterion, model, sample)  # warm-up (CQT kernels built once per length)
    model.zero_grad()
    sample = batch(ds, [4, 5, 6, 7])  # the collater's work (loader workers) is not part of the step
    with CountOps() as ops:
        _step(criterion, model, sample)
    assert ops.data_dependent() == {}, ops.data_dependent()
    assert sum(ops.ops.values()) > 100  # the counter saw the step


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_step_is_one_graph_reused_across_masks(tone_data, name):
    """torch._dynamo.explain: 0 graph breaks; compiled fullgraph (aot_eager backend: the graph capture and
    autograd split that inductor gets, without C++ code generation), reused for 3 batches whose masks differ,
    with the loss equal to eager."""
    task, model, criterion, ds = build_recipe(name, tone_data, extra=["++model.dropout=0.0", "++model.attention_dropout=0.0",
                                                                       "++model.dropout_input=0.0"])
    model.train()
    samples = [batch(ds, ids) for ids in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11])]
    assert not torch.equal(samples[0]["net_input"]["draws"].mask, samples[1]["net_input"]["draws"].mask)
    s = samples[0]
    criterion.step_tensors(model, s["target_list"], s["net_input"])  # eager once per shape (CompiledStep does too)
    explain = torch._dynamo.explain(criterion.step_tensors)(model, s["target_list"], s["net_input"])
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):  # aot_eager, counting the graphs dynamo hands over
        from torch._dynamo.backends.debugging import aot_eager

        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    compiled = torch.compile(criterion.step_tensors, backend=backend, fullgraph=True, dynamic=False)
    for s in samples:
        eager = criterion.step_tensors(model, s["target_list"], s["net_input"])["loss"]
        out = compiled(model, s["target_list"], s["net_input"])
        out["loss"].backward()
        assert torch.allclose(out["loss"], eager, rtol=1e-5), (out["loss"], eager)
    assert len(graphs) == 1  # no recompilation for new masks, mixtures, layerdrop draws
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ the compiled step
COMPILE_UPDATES = 20


def _train_demo(data: dict, compiled: bool, init=None):
    """COMPILE_UPDATES updates of the demo recipe (one encoder layer: the smallest graph to compile) through
    fairseq's Trainer, batches of 2 clips that differ in every update (other clips, masks, mixtures);
    (losses per masked frame, final weights, the initial weights)."""
    from mert_fairseq.perf.training_setup import batch as collate, build_trainer, compose_config

    torch.manual_seed(1)
    cfg = compose_config("MERT_demo_cpu", ["model.encoder_layers=1", f"task.compile_step={str(compiled).lower()}"])
    trainer = build_trainer(cfg, data["data"], data["labels"], label_dir=data["label_dir"])
    model = trainer.model
    if init is not None:
        model.load_state_dict(init)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    losses, train_step = [], trainer.task.train_step

    def recorded(*args, **kwargs):  # the task's step, its loss recorded
        loss, sample_size, log = train_step(*args, **kwargs)
        losses.append(float(loss) / sample_size)
        return loss, sample_size, log

    trainer.task.train_step = recorded
    ds = trainer.task.dataset("train")
    for u in range(COMPILE_UPDATES):
        trainer.train_step([collate(ds, [u % 16, (u + 5) % 16])])
    assert trainer.get_num_updates() == COMPILE_UPDATES
    return losses, model.state_dict(), start


@pytest.mark.slow
def test_compiled_step_trains_the_demo_recipe_as_eager_and_compiles_once(tone_data):
    """task.compile_step=true (CompiledStep, inductor on the CPU) from the same initial weights on the same
    batches: 20 updates give eager's losses and final weights within 1e-4, and the step compiles once (one
    graph, reused by every update after the first, whose masks and mixtures all differ)."""
    from torch._dynamo.utils import counters

    eager_losses, eager_weights, init = _train_demo(tone_data, compiled=False)
    torch._dynamo.reset()
    counters.clear()
    losses, weights, _ = _train_demo(tone_data, compiled=True, init=init)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert len(losses) == len(eager_losses) == COMPILE_UPDATES
    assert max(abs(a - b) for a, b in zip(losses, eager_losses)) < 1e-4, (losses, eager_losses)
    assert losses[-1] < losses[0]  # it trains
    assert set(weights) == set(eager_weights)
    moved = max(float((weights[k] - init[k]).abs().max()) for k in weights)
    assert moved > 1e-3  # the weights moved
    for k in weights:
        assert float((weights[k] - eager_weights[k]).abs().max()) < 1e-4, k
    torch._dynamo.reset()
