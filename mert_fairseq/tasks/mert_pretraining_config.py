"""The `mert_pretraining` task's config: the original task's fields, so original YAMLs and checkpoint configs
load (the model's config: models/mert_config.py)."""

from dataclasses import dataclass, field
from typing import List, Optional

from fairseq.dataclass.configs import FairseqDataclass
from omegaconf import II, MISSING


@dataclass
class MERTPretrainingConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "directory with {split}.tsv manifests"})
    label_dir: Optional[str] = field(default=None, metadata={"help": "directory with label files (default: data)"})
    labels: List[str] = field(
        default_factory=lambda: ["ltr"],
        metadata={"help": "label streams: files {label_dir}/{split}.{label} and dict.{label}.txt"},
    )
    label_rate: float = field(default=-1.0, metadata={"help": "label frames per second (75 for EnCodec at 24 kHz)"})
    sample_rate: int = field(default=16_000, metadata={"help": "audio sample rate; files must already have it"})
    normalize: bool = field(default=False, metadata={"help": "normalise each clip to zero mean, unit variance"})
    enable_padding: bool = field(default=False, metadata={"help": "no effect: legacy HuBERT field (use pad_audio)"})
    max_keep_size: Optional[int] = field(default=None, metadata={"help": "drop clips longer than this (samples)"})
    max_sample_size: Optional[int] = field(default=None, metadata={"help": "crop clips to at most this (samples)"})
    min_sample_size: Optional[int] = field(default=None, metadata={"help": "drop clips shorter than this (samples)"})
    single_target: Optional[bool] = field(default=False, metadata={"help": "batch keys 'target' instead of lists"})
    random_crop: Optional[bool] = field(default=True, metadata={"help": "random crop start (else from 0)"})
    pad_audio: Optional[bool] = field(default=False, metadata={"help": "pad to the longest clip instead of cropping"})
    fine_tuning: bool = field(default=False, metadata={"help": "one target dictionary (fine-tuning)"})
    store_labels: Optional[bool] = field(
        default=False, metadata={"help": "no effect: labels are read by byte offset (text) or memory-mapped (.npy)"}
    )
    numpy_memmap_label: Optional[bool] = field(
        default=False, metadata={"help": "labels in {split}.{label}.npy (rows padded with -1), memory-mapped"}
    )
    augmentation_effects: Optional[str] = field(
        default="[]", metadata={"help": "list of random_mute, random_Gaussian, reverse_polarity"}
    )
    augmentation_probs: Optional[str] = field(default="[]", metadata={"help": "probability of each effect"})
    inbatch_noise_augment_len_range: Optional[str] = field(
        default="[8000, 24000]", metadata={"help": "no effect: the model's field of this name is used"}
    )
    inbatch_noise_augment_number_range: Optional[str] = field(
        default="[1, 3]", metadata={"help": "no effect: the model's field of this name is used"}
    )
    inbatch_noise_augment_volume: float = field(
        default=1.0, metadata={"help": "no effect: the model's field of this name is used"}
    )
    dynamic_crops: Optional[str] = field(
        default="[]", metadata={"help": "max clip seconds per stage, e.g. [5, 10]"}
    )
    dynamic_crops_epoches: Optional[str] = field(
        default="[]", metadata={"help": "first epoch of each dynamic_crops stage, starting at 1"}
    )
    cqt_loss_bin_dataloader: Optional[int] = field(
        default=-1, metadata={"help": "no effect: CQT targets are computed by the model (fp32)"}
    )
    sharding_data: int = field(
        default=-1, metadata={"help": "n > 1: train on {split}_{i}_{n}.tsv shards, one shard per epoch"}
    )
    load_random_data_shard: bool = field(
        default=True, metadata={"help": "seeded random shard per epoch (else shards in order)"}
    )
    skip_bad_audio: bool = field(
        default=False, metadata={"help": "skip unreadable clips with a logged count instead of failing"}
    )
    bf16_autocast: bool = field(
        default=False,
        metadata={"help": "run forward and loss under torch.autocast(bfloat16) with fp32 weights and optimizer "
                          "(CPU or GPU; unlike common.bf16 nothing is cast to bf16 permanently)"},
    )
    windowed_reads: bool = field(
        default=True,
        metadata={"help": "read only the crop window of clips longer than max_sample_size (same batches as "
                          "whole-file reads); false reads every clip whole"},
    )
    keep_freed_memory: bool = field(
        default=True,
        metadata={"help": "raise glibc malloc's trim/mmap thresholds so data loading reuses freed memory "
                          "instead of re-faulting pages every batch (mert_fairseq/data/allocator.py)"},
    )
    compile_encoder_layers: bool = field(
        default=False,
        metadata={"help": "torch.compile each transformer layer in place (same state-dict keys); first steps "
                          "compile (tens of seconds); a GPU lever, slower on CPU"},
    )
    draws_in_collater: bool = field(
        default=True,
        metadata={"help": "draw masks, noise mixture, layerdrop and random codebooks in the data loader (fixed "
                          "shapes, no host sync in the step); false: the model draws them (as before)"},
    )
    compile_step: bool = field(
        default=False,
        metadata={"help": "torch.compile the mert criterion's step (forward + loss; fullgraph, inductor); "
                          "the first steps compile; a GPU lever"},
    )
    cuda_graphs: bool = field(
        default=False,
        metadata={"help": "with compile_step: capture the compiled step in CUDA graphs (inductor's "
                          "reduce-overhead mode; fixed batch shapes: cropped batches of one size)"},
    )
    seed: int = II("common.seed")
    resume_from_intact_checkpoint: bool = field(
        default=True,
        metadata={"help": "when checkpoint_last.pt is damaged (torn, truncated, zero bytes), resume from the intact "
                          "checkpoint with the most updates in checkpoint.save_dir; false: stop with an error"},
    )
    max_consecutive_bad_updates: int = field(
        default=10,
        metadata={"help": "updates with a non-finite loss or gradient are skipped (fp32/bf16; fp16 uses its loss "
                          "scaler); stop the run after this many in a row (0: never stop)"},
    )
    max_bad_audio_fraction: float = field(
        default=0.05,
        metadata={"help": "with skip_bad_audio: fail when more than this fraction of a split's clips was "
                          "unreadable in one epoch"},
    )

    # ---- probing during pretraining (mert_fairseq/evaluation/online_probe.py)
    probe_csv: Optional[str] = field(
        default=None, metadata={"help": "labels CSV (file column + task columns, paths relative to the CSV) of "
                                        "a small held-out set probed during training; logs probe_<task> keys"})
    probe_interval_updates: int = field(
        default=1000, metadata={"help": "probe every N updates (and at update 0) on the main process"})
    probe_tasks: Optional[str] = field(
        default=None, metadata={"help": "comma list of CSV columns (column or column:kind) to probe; default all"})
    probe_max_clips: int = field(default=100, metadata={"help": "probe at most this many clips (first rows)"})
    probe_clip_seconds: float = field(default=4.0, metadata={"help": "probe the first N seconds of each clip"})
    probe_folds: int = field(default=3, metadata={"help": "cross-validation folds of the online probe"})
    # ---- targets computed by the model instead of label files (models/teachers/random_projection.py)
    online_targets: Optional[str] = field(
        default=None, metadata={"help": "'random_projection': BEST-RQ codes of the clean audio, computed on the "
                                        "fly (no label files; `labels` only names the streams)"})
    online_targets_codebooks: int = field(default=1, metadata={"help": "number of random codebooks"})
    online_targets_codebook_size: int = field(default=1024, metadata={"help": "codes per codebook"})
    online_targets_dim: int = field(default=16, metadata={"help": "dimension of the random projection / codes"})
    online_targets_feature: str = field(default="mel", metadata={"help": "frames to quantise: mel or cqt"})
    online_targets_bins: int = field(default=80, metadata={"help": "mel bands, or CQT bins (7 octaves)"})
    online_targets_seed: int = field(default=0, metadata={"help": "seed of the projections and codebooks"})


# field -> why it does nothing; the task warns once when one differs from its default
# (common.config_values.warn_fields_without_effect; the model's table: models.mert_config.NO_EFFECT_FIELDS).
NO_EFFECT_FIELDS = {
    "enable_padding": "legacy HuBERT field; task.pad_audio pads to the longest clip",
    "store_labels": "labels are read by byte offset (text) or memory-mapped (.npy), never held in memory",
    "cqt_loss_bin_dataloader": "the model computes CQT targets in fp32",
    "inbatch_noise_augment_len_range": "the model's field model.inbatch_noise_augment_len_range is used",
    "inbatch_noise_augment_number_range": "the model's field model.inbatch_noise_augment_number_range is used",
    "inbatch_noise_augment_volume": "the model's field model.inbatch_noise_augment_volume is used",
}
