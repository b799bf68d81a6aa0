"""The `mert_pretraining` task: loads manifests, label dictionaries and `MERTDataset`s.

Config: tasks/mert_pretraining_config.py (the original task's fields, so original YAMLs and checkpoints load).
Sharded data (`sharding_data` = n > 1: `{split}_{i}_{n}.tsv` + labels) and `dynamic_crops` rotate
every epoch under stock fairseq: `has_sharded_data` asks the trainer to reload the train split each
epoch, and the shard for an epoch is a pure function of (seed, epoch), so a resumed run continues
with the same shard sequence.
"""

import logging
import os
import sys
from typing import Callable, List, Optional

import numpy as np
import torch
from fairseq.data.dictionary import Dictionary
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.fairseq_task import FairseqTask

from mert_fairseq.data import allocator, loader_shutdown
from mert_fairseq.common.config_values import parse_list_literal, warn_fields_without_effect
from mert_fairseq.criterions.mert_criterion import MertCriterion
from mert_fairseq.data.mert_dataset import DataError, MERTDataset
from mert_fairseq.models.teachers.random_projection import code_dictionary
from mert_fairseq.optim.non_finite import NonFiniteGuard
from mert_fairseq.tasks import fairseq_patches
from mert_fairseq.tasks.mert_pretraining_config import NO_EFFECT_FIELDS, MERTPretrainingConfig

logger = logging.getLogger(__name__)


FSDP_NEEDS_CUDA = (
    "distributed_training.ddp_backend=fully_sharded (fairscale's FullyShardedDataParallel) needs CUDA: fairscale "
    "gathers the sharded weights on CUDA streams and defaults its compute device to the GPU, and this run has "
    "{why}. On CPU use distributed_training.ddp_backend=legacy_ddp (or no_c10d, c10d).")


def in_fsdp_wrap_context() -> bool:
    """True while fairseq builds the model for distributed_training.ddp_backend=fully_sharded (fsdp_enable_wrap)."""
    try:
        from fairscale.nn.wrap.auto_wrap import ConfigAutoWrap
    except ImportError:
        return False
    return bool(ConfigAutoWrap.in_autowrap_context)


def check_fsdp(cfg) -> None:
    """A clear error for FSDP where fairscale cannot run it (instead of 'Found no NVIDIA driver' deep inside).
    `cfg` is the task's config node; the run's full config is its parent (as fairseq builds it)."""
    root = cfg._get_parent() if hasattr(cfg, "_get_parent") else None
    if root is not None and root.get("common") is not None and root.common.get("cpu"):
        raise ValueError(FSDP_NEEDS_CUDA.format(why="common.cpu=true"))
    if not torch.cuda.is_available():
        raise ValueError(FSDP_NEEDS_CUDA.format(why="no CUDA device (torch.cuda.is_available() is False)"))
    if cfg.get("probe_csv"):
        raise ValueError("task.probe_csv (online probes) is not supported with distributed_training.ddp_backend="
                         "fully_sharded: the probe runs the model outside FSDP's forward; probe the saved checkpoints "
                         "with scripts/probe.py instead")


def wrap_encoder_layers_for_fsdp(model) -> None:
    """Shard every encoder layer on its own (fairseq's fsdp_wrap), so that only one layer's full weights are
    gathered at a time; the outer model is wrapped by fairseq. Layerdrop then computes a dropped layer and
    discards it: every rank gathers every layer, in the same order."""
    from fairseq.distributed import fsdp_wrap

    model.encoder.skip_dropped_layers = False

    for i, layer in enumerate(model.encoder.layers):
        model.encoder.layers[i] = fsdp_wrap(layer)


class CompiledStep:
    """The mert criterion's step compiled as one graph of fixed shapes (`fullgraph=True, dynamic=False`).
    The first step of each input shape runs eager: it builds what the model caches per clip length (the CQT
    kernel spectra, host-side numpy work that is no part of the graph); later steps of that shape run the
    compiled graph, which is traced once and reused whatever the masks and mixture draws."""

    def __init__(self, step) -> None:
        self.eager = step
        self.compiled = torch.compile(step, fullgraph=True, dynamic=False)
        self.seen: set = set()

    def __call__(self, model, target_list, net_input):
        key = (tuple(net_input["source"].shape), str(net_input["source"].device))
        if key not in self.seen:
            self.seen.add(key)
            return self.eager(model, target_list, net_input)
        return self.compiled(model, target_list, net_input)


def compile_step(criterion) -> None:
    """task.compile_step: the mert criterion's step through `CompiledStep`."""
    if not hasattr(criterion, "step_tensors"):
        raise ValueError(f"task.compile_step needs criterion mert, not {type(criterion).__name__}")
    criterion.compiled_step = CompiledStep(criterion.step_tensors)
    logger.info("compiled the training step (torch.compile fullgraph)")


@register_task("mert_pretraining", dataclass=MERTPretrainingConfig)
class MERTPretrainingTask(FairseqTask):
    cfg: MERTPretrainingConfig

    def __init__(self, cfg: MERTPretrainingConfig) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        self.state.add_factory("target_dictionary" if cfg.fine_tuning else "dictionaries", self.load_dictionaries)
        self.augmentation_effects = parse_list_literal(cfg.augmentation_effects, "task.augmentation_effects")
        self.augmentation_probs = parse_list_literal(cfg.augmentation_probs, "task.augmentation_probs")
        self.dynamic_crops = parse_list_literal(cfg.dynamic_crops, "task.dynamic_crops")
        self.dynamic_crops_epoches = parse_list_literal(cfg.dynamic_crops_epoches, "task.dynamic_crops_epoches")
        if len(self.dynamic_crops) != len(self.dynamic_crops_epoches):
            raise ValueError("task.dynamic_crops and task.dynamic_crops_epoches need the same length")
        if self.dynamic_crops and self.dynamic_crops_epoches[0] != 1:
            raise ValueError("task.dynamic_crops_epoches must start at epoch 1")
        self.nonfinite_guard = NonFiniteGuard(cfg.max_consecutive_bad_updates)
        self._online_probe, self._probed_at, self._probe_scores = None, -1, None  # task.probe_csv
        warn_fields_without_effect(cfg, NO_EFFECT_FIELDS, "task")

    def build_model(self, cfg, from_checkpoint: bool = False):
        fsdp = in_fsdp_wrap_context()
        if fsdp:
            check_fsdp(self.cfg)
        model = super().build_model(cfg, from_checkpoint)
        self.draw_spec = model.draw_spec()  # what the collater draws (datasets are loaded after the model)
        if fsdp:
            wrap_encoder_layers_for_fsdp(model)
        return model

    def build_criterion(self, cfg, from_checkpoint: bool = False):
        """The `mert` criterion; `hubert` (original YAMLs and checkpoints) is an alias of it: the same fields,
        loss and logs through the same code."""
        if cfg._name == "hubert":
            criterion = MertCriterion.build_criterion(cfg, self)
        else:
            criterion = super().build_criterion(cfg, from_checkpoint)
        if self.cfg.compile_step:
            compile_step(criterion)
        return criterion

    @classmethod
    def setup_task(cls, cfg: MERTPretrainingConfig, **kwargs) -> "MERTPretrainingTask":
        """The task, with mert-fairseq's patches of fairseq's checkpoint handling installed
        (`fairseq_patches`: atomic checkpoint files, resume past a damaged checkpoint_last.pt)."""
        fairseq_patches.install()
        return cls(cfg)

    @property
    def source_dictionary(self) -> Optional[Dictionary]:
        return None

    @property
    def target_dictionary(self) -> Optional[Dictionary]:
        return self.state.target_dictionary

    @property
    def dictionaries(self) -> List[Dictionary]:
        return self.state.dictionaries

    def get_label_dir(self) -> str:
        return self.cfg.label_dir if self.cfg.label_dir is not None else self.cfg.data

    def load_dictionaries(self):
        if self.cfg.online_targets:  # codes computed by the model: one code dictionary per codebook
            return [code_dictionary(self.cfg.online_targets_codebook_size)
                    for _ in range(self.cfg.online_targets_codebooks)]
        dictionaries = []
        for label in self.cfg.labels:
            path = os.path.join(self.get_label_dir(), f"dict.{label}.txt")
            if not os.path.isfile(path):
                raise DataError(f"{path}: dictionary for label stream {label!r} not found")
            dictionaries.append(Dictionary.load(path))
        return dictionaries[0] if self.cfg.fine_tuning else dictionaries

    # ------------------------------------------------------------------ per-epoch data
    def has_sharded_data(self, split: str) -> bool:
        """True makes stock fairseq reload the train split every epoch (shards, dynamic crops)."""
        return "train" in split and (self.cfg.sharding_data > 1 or bool(self.dynamic_crops))

    def shard_for_epoch(self, epoch: int) -> int:
        n = self.cfg.sharding_data
        if self.cfg.load_random_data_shard:
            return int(np.random.default_rng([self.cfg.seed, epoch]).integers(n))
        return (epoch - 1) % n

    def max_sample_size_for_epoch(self, epoch: int) -> Optional[int]:
        if not self.dynamic_crops:
            return self.cfg.max_sample_size
        stage = sum(epoch >= e for e in self.dynamic_crops_epoches) - 1
        return int(self.dynamic_crops[stage] * self.cfg.sample_rate)

    def load_dataset(self, split: str, epoch: int = 1, **kwargs) -> None:
        name, max_sample_size = split, self.cfg.max_sample_size
        if "train" in split:
            max_sample_size = self.max_sample_size_for_epoch(epoch)
            if self.cfg.sharding_data > 1:
                name = f"{split}_{self.shard_for_epoch(epoch)}_{self.cfg.sharding_data}"
                logger.info("epoch %d: training on shard %s", epoch, name)
        dicts = [self.target_dictionary] if self.cfg.fine_tuning else self.dictionaries
        allocator.keep_freed_memory()  # before the loader workers fork: they inherit the setting
        self.datasets[split] = MERTDataset(
            os.path.join(self.cfg.data, f"{name}.tsv"),
            sample_rate=self.cfg.sample_rate,
            label_paths=[] if self.cfg.online_targets else
            [os.path.join(self.get_label_dir(), f"{name}.{label}") for label in self.cfg.labels],
            label_rate=self.cfg.label_rate,
            dictionaries=[] if self.cfg.online_targets else dicts,
            max_keep_sample_size=self.cfg.max_keep_size,
            min_keep_sample_size=self.cfg.min_sample_size,
            max_sample_size=max_sample_size,
            pad_audio=self.cfg.pad_audio,
            normalize=self.cfg.normalize,
            store_labels=self.cfg.store_labels,
            numpy_memmap_label=self.cfg.numpy_memmap_label,
            random_crop=self.cfg.random_crop,
            single_target=self.cfg.single_target,
            augmentation_effects=self.augmentation_effects,
            augmentation_probs=self.augmentation_probs,
            skip_bad_audio=self.cfg.skip_bad_audio,
            max_bad_audio_fraction=self.cfg.max_bad_audio_fraction,
            seed=self.cfg.seed,
            draw_spec=getattr(self, "draw_spec", None),
        )

    # ------------------------------------------------------------------ steps
    def maybe_probe(self, model, update_num: int) -> None:
        """task.probe_csv: every probe_interval_updates (and at 0) probe on the main process; every step logs
        the latest scores as probe_<task> (so each log line carries them)."""
        interval = self.cfg.probe_interval_updates
        if not self.cfg.probe_csv or interval <= 0:
            return
        main = not (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0)
        if main and update_num % interval == 0 and update_num != self._probed_at:
            self._probed_at = update_num  # once per update, also with update_freq > 1
            from mert_fairseq.evaluation.online_probe import OnlineProbe

            if self._online_probe is None:
                c = self.cfg
                self._online_probe = OnlineProbe(c.probe_csv, c.sample_rate, c.normalize, c.probe_tasks,
                                                 c.probe_max_clips, c.probe_clip_seconds, c.probe_folds)
            self._probe_scores = self._online_probe.run(getattr(model, "module", model))
        for name, score in (self._probe_scores or {}).items():
            metrics.log_scalar(f"probe_{name}", score, priority=900, round=3)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """fairseq's step, its forward and loss in the task's precision (`_in_precision`); a non-finite loss or
        gradient marks the update to be skipped (mert_fairseq.optim.non_finite)."""
        self.maybe_probe(model, update_num)
        loss, sample_size, logging_output = super().train_step(
            sample, model, self._in_precision(criterion), optimizer, update_num, ignore_grad)
        self.nonfinite_guard.after_backward(loss, optimizer, update_num)
        return loss, sample_size, logging_output

    def optimizer_step(self, optimizer, model, update_num):
        """The optimizer step, unless this update had a non-finite loss or gradient."""
        if self.nonfinite_guard.take_step():
            super().optimizer_step(optimizer, model, update_num)
        else:
            metrics.log_scalar_sum("bad_updates", 1, priority=900, round=0)
            self.nonfinite_guard.log_skip(update_num)

    def reduce_metrics(self, logging_outputs, criterion):
        """Logs of a skipped (non-finite) update are left out of the averages."""
        if not self.nonfinite_guard.take_skipped_logs():
            super().reduce_metrics(logging_outputs, criterion)
        else:
            metrics.log_scalar("loss", 0.0, weight=0)  # keeps fairseq from logging a placeholder loss

    def valid_step(self, sample, model, criterion):
        return super().valid_step(sample, model, self._in_precision(criterion))

    def _in_precision(self, criterion) -> Callable:
        """The criterion as fairseq's train_step / valid_step call it: itself, or with `bf16_autocast` the same
        call under torch.autocast(bfloat16), forward and loss only (the backward runs outside, as autocast
        asks). Not an outer context around fairseq's step: its forward runs inside
        `torch.cuda.amp.autocast(enabled=<fairseq's AMP>)`, which turns an outer CUDA autocast off."""
        if not self.cfg.bf16_autocast:
            return criterion

        def in_bf16(model, sample):
            with torch.autocast(device_type=next(model.parameters()).device.type, dtype=torch.bfloat16):
                return criterion(model, sample)

        return in_bf16

    @staticmethod
    def logging_outputs_can_be_summed(criterion) -> bool:
        """The mert criterion's logging values (losses, correct/count, sizes) are all sums, so workers
        can all-reduce them (works on CPU/gloo; fairseq's default pickled all-gather needs CUDA).
        fairseq calls this on the class with the criterion as the only argument."""
        return not getattr(criterion, "log_keys", None)

    def get_batch_iterator(self, *args, **kwargs):
        """fairseq's iterator; its DataLoader workers are shut down in order when training ends
        (else the process lingers 5 s per worker after `done training` on GPU: see loader_shutdown)."""
        epoch_iterator = super().get_batch_iterator(*args, **kwargs)
        loader_shutdown.track(epoch_iterator)
        return epoch_iterator

    def max_positions(self):
        return (sys.maxsize, sys.maxsize)

    def filter_indices_by_size(self, indices: np.ndarray, *args, **kwargs) -> np.ndarray:
        return indices  # lengths are handled by the dataset's keep sizes and cropping
