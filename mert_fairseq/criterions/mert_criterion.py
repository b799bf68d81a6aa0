"""`criterion._name=mert`: the loss of fairseq's `hubert` criterion, computed for a GPU step. Original YAMLs that
name `criterion: hubert` build this class too (`MERTPretrainingTask.build_criterion`: same fields, same loss and
logs), so there is one loss path; the original's formulation lives with the benchmark (`perf/reference.py`).

Same numbers as `hubert` with the same masks (the reference, tests/test_gpu_step.py, 1e-5): per label stream k the summed
cross-entropy of the masked frames' class logits (`pred_masked_weight`; unmasked: `pred_nomask_weight`), plus
`loss_weights[i] * extra_i * sample_size` for the model's extra losses (features_pen, cqt_pred_m), and the
accuracy counters `correct_m_k` / `count_m_k`. Computed differently:

- every codebook's logits at every frame in one batched matmul (K x B*T x C) and one cross-entropy over the
  K x B*T rows, weighted by the B x T mask: fixed shapes whatever the mask, no gather of a varying number of
  frames (hubert's layout puts the target in column 0 of a 1 + C row; the same loss, since that row holds the
  target's logit and every other class's);
- logging values stay device tensors through the step (no `.item()`), are summed across workers in one
  all-reduce (`logging_outputs_can_be_summed`: fairseq's fast stat sync), and become numbers in one device
  copy per update in `reduce_metrics`; sample sizes are host ints counted by the collater (`StepDraws`);
- `step_tensors` (model forward + loss, tensors in and out) is what `task.compile_step` compiles.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics


@dataclass
class MertCriterionConfig(FairseqDataclass):
    pred_masked_weight: float = field(default=1.0, metadata={"help": "weight of the masked frames' prediction loss"})
    pred_nomask_weight: float = field(default=0.0, metadata={"help": "weight of the unmasked frames' prediction loss"})
    loss_weights: Optional[List[float]] = field(
        default=None, metadata={"help": "weights of the model's extra losses (features_pen, cqt_pred_m, ...)"})
    log_keys: List[str] = field(
        default_factory=lambda: [],
        metadata={"help": "net_output keys to log (as hubert; each costs a host sync per step and turns the "
                          "summed stat sync off)"})


@register_criterion("mert", dataclass=MertCriterionConfig)
class MertCriterion(FairseqCriterion):
    def __init__(self, task, pred_masked_weight: float, pred_nomask_weight: float,
                 loss_weights: Optional[List[float]] = None, log_keys: Optional[List[str]] = None) -> None:
        super().__init__(task)
        self.pred_masked_weight = pred_masked_weight
        self.pred_nomask_weight = pred_nomask_weight
        self.loss_weights = loss_weights
        self.log_keys = [] if log_keys is None else list(log_keys)

    # ------------------------------------------------------------------ the step (tensors only)
    def step_tensors(self, model, target_list: List[torch.Tensor], net_input: dict) -> Dict[str, torch.Tensor]:
        """Forward and loss: {loss, loss_m K, correct_m K, loss_u K, correct_u K, extra losses, n_m, n_u}, all
        tensors (n_m, n_u: masked / unmasked frame counts on the device). No host sync, fixed shapes."""
        net_output = model(target_list=target_list, **net_input)
        logits = model.frame_logits(net_output)  # K x N x C, fp32
        K, N, C = logits.shape
        targets = net_output["targets"].reshape(K, N)
        ce = F.cross_entropy(logits.reshape(K * N, C), targets.reshape(-1), reduction="none").view(K, N)
        with torch.no_grad():  # hubert's count: the target's logit is the largest (ties count as correct)
            right = logits.gather(2, targets.unsqueeze(-1)).squeeze(-1) >= logits.amax(-1)  # K x N
        weight = net_output.get("codebook_weight")
        out: Dict[str, torch.Tensor] = {}
        loss = logits.new_zeros(())
        for kind, coef, skip in (("m", self.pred_masked_weight, model.opts.skip_masked),
                                 ("u", self.pred_nomask_weight, model.opts.skip_nomask)):
            if skip:
                continue
            frames = net_output["masked" if kind == "m" else "unmasked"].reshape(N).to(ce.dtype)
            per_stream = ce @ frames  # K: summed cross-entropy of the selected frames
            correct = (right.to(ce.dtype) @ frames).detach()
            if weight is not None:  # random_codebook: the streams not picked this step count nothing
                per_stream, correct = per_stream * weight, correct * weight
            out[f"loss_{kind}"], out[f"correct_{kind}"], out[f"n_{kind}"] = per_stream, correct, frames.sum()
            if coef > 0:
                loss = loss + coef * per_stream.sum()
        size = self._sample_size_tensor(out, logits)
        if self.loss_weights is not None:
            extra, names = model.get_extra_losses(net_output)
            if len(self.loss_weights) == 1 and len(extra) != 1:
                self.loss_weights = [self.loss_weights[0]] * len(extra)
            assert len(extra) == len(self.loss_weights), f"{len(extra)} extra losses, {len(self.loss_weights)} weights"
            for p, n, coef in zip(extra, names, self.loss_weights):
                if coef != 0 and p is not None:
                    p = coef * p.float() * size
                    loss = loss + p
                    out[f"extra_{n}"] = p.detach()
        out["loss"] = loss
        out.update({f"log_{k}": net_output[k] for k in self.log_keys if k in net_output})
        return out

    def _sample_size_tensor(self, out: dict, like: torch.Tensor) -> torch.Tensor:
        size = like.new_zeros(())
        if self.pred_masked_weight > 0 and "n_m" in out:
            size = size + out["n_m"]
        if self.pred_nomask_weight > 0 and "n_u" in out:
            size = size + out["n_u"]
        return size

    # ------------------------------------------------------------------ fairseq interface
    def forward(self, model, sample, reduce: bool = True):
        if not reduce:
            raise ValueError("criterion mert: reduce=False is not supported (the loss is summed over frames)")
        step = getattr(self, "compiled_step", None) or self.step_tensors
        net_input = sample["net_input"]
        draws = net_input["draws"]  # StepDraws: fairseq moves the batch's tensors to the device, not these
        net_input = {**net_input, "draws": draws.to(net_input["source"].device)}
        out = step(model, sample["target_list"], net_input)
        counts = {"m": draws.masked_frames, "u": draws.valid_frames - draws.masked_frames}  # host ints
        sample_size = 0
        if self.pred_masked_weight > 0 and "n_m" in out:
            sample_size += counts["m"]
        if self.pred_nomask_weight > 0 and "n_u" in out:
            sample_size += counts["u"]
        log = {"loss": out["loss"].detach(), "ntokens": sample_size, "nsentences": sample["id"].numel(),
               "sample_size": sample_size}
        for kind in ("m", "u"):
            if f"loss_{kind}" not in out:
                continue
            weight = net_input["draws"].codebook_weight
            for k in range(out[f"loss_{kind}"].numel()):
                log[f"loss_{kind}_{k}"] = out[f"loss_{kind}"][k].detach()
                log[f"correct_{kind}_{k}"] = out[f"correct_{kind}"][k]
                log[f"count_{kind}_{k}"] = counts[kind] if weight is None else out[f"n_{kind}"] * weight[k]
        log.update({f"loss_{k[len('extra_'):]}": v for k, v in out.items() if k.startswith("extra_")})
        log.update({k[len("log_"):]: float(v) for k, v in out.items() if k.startswith("log_")})
        return out["loss"], sample_size, log

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        """hubert's metrics (loss in bits per frame, nll_loss/ppl, loss_* per stream, correct_* / count_*),
        from the summed logging outputs; device values become numbers in one copy."""
        keys = list(logging_outputs[0])
        sums = {k: sum(log.get(k, 0) for log in logging_outputs) for k in keys}
        tensors = [k for k, v in sums.items() if torch.is_tensor(v)]
        if tensors:
            values = torch.stack([sums[k].detach().float().reshape(()) for k in tensors]).tolist()
            sums.update(zip(tensors, values))
        loss, ntokens, sample_size = sums.get("loss", 0.0), sums.get("ntokens", 0), sums.get("sample_size", 0)
        metrics.log_scalar("loss", loss / (sample_size or 1) / math.log(2), sample_size, round=3)
        if sample_size != ntokens:
            metrics.log_scalar("nll_loss", loss / (ntokens or 1) / math.log(2), ntokens, round=3)
            metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        else:
            metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["loss"].avg))
        for k in keys:
            if k.startswith("count_"):
                metrics.log_scalar(k, sums[k])
            elif k.startswith("loss_"):
                metrics.log_scalar(k, sums[k] / (sample_size or 1) / math.log(2), round=3)
            elif k.startswith("correct_"):
                count = sums[re.sub("correct", "count", k)]
                metrics.log_scalar(k, sums[k] / count if count else 0.0)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
