"""The `mert_pretraining` task's config: its live fields, plus the fields accepted only so that original YAMLs
and stored checkpoint configs load (`NO_EFFECT_FIELDS`, a base class built from that table; the model's
config: models/mert_config.py)."""

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import II, MISSING

from mert_fairseq.common.config_values import Accepted, accepted_fields


# Fields accepted only so that original YAMLs and the configs stored in checkpoints (the original's and this
# project's older ones) load: name -> default, why it does nothing. The task warns once when one is set away from
# its default (common.config_values.warn_fields_without_effect; the model's table: models.mert_config).
NO_EFFECT_FIELDS = {
    "enable_padding": Accepted(False, "legacy HuBERT field; task.pad_audio pads to the longest clip"),
    "store_labels": Accepted(False, "labels are read by byte offset (text) or memory-mapped (.npy), never held in "
                                    "memory", Optional[bool]),
    "cqt_loss_bin_dataloader": Accepted(-1, "the model computes CQT targets in fp32", Optional[int]),
    "inbatch_noise_augment_len_range": Accepted(
        "[8000, 24000]", "the model's field model.inbatch_noise_augment_len_range is used", Optional[str]),
    "inbatch_noise_augment_number_range": Accepted(
        "[1, 3]", "the model's field model.inbatch_noise_augment_number_range is used", Optional[str]),
    "inbatch_noise_augment_volume": Accepted(1.0, "the model's field model.inbatch_noise_augment_volume is used"),
    # switches of earlier versions of this project, stored in their checkpoints
    "windowed_reads": Accepted(True, "removed switch: clips longer than max_sample_size are always read as the "
                                     "crop window only"),
    "keep_freed_memory": Accepted(True, "removed switch: the data loader always keeps freed memory "
                                        "(data/allocator.py)"),
    "draws_in_collater": Accepted(True, "removed switch: masks, noise mixture, layerdrop and codebooks are always "
                                        "drawn in the data loader's collater"),
    "compile_encoder_layers": Accepted(False, "removed GPU lever (per-layer torch.compile); task.compile_step "
                                              "compiles the whole step"),
    "cuda_graphs": Accepted(False, "removed GPU lever (CUDA graph capture of the compiled step)"),
}


@dataclass
class MERTPretrainingConfig(accepted_fields("MERTPretrainingConfigAccepted", NO_EFFECT_FIELDS)):
    data: str = field(default=MISSING, metadata={"help": "directory with {split}.tsv manifests"})
    label_dir: Optional[str] = field(default=None, metadata={"help": "directory with label files (default: data)"})
    labels: List[str] = field(
        default_factory=lambda: ["ltr"],
        metadata={"help": "label streams: files {label_dir}/{split}.{label} and dict.{label}.txt"},
    )
    label_rate: float = field(default=-1.0, metadata={"help": "label frames per second (75 for EnCodec at 24 kHz)"})
    sample_rate: int = field(default=16_000, metadata={"help": "audio sample rate; files must already have it"})
    normalize: bool = field(default=False, metadata={"help": "normalise each clip to zero mean, unit variance"})
    max_keep_size: Optional[int] = field(default=None, metadata={"help": "drop clips longer than this (samples)"})
    max_sample_size: Optional[int] = field(default=None, metadata={"help": "crop clips to at most this (samples)"})
    min_sample_size: Optional[int] = field(default=None, metadata={"help": "drop clips shorter than this (samples)"})
    single_target: Optional[bool] = field(default=False, metadata={"help": "batch keys 'target' instead of lists"})
    random_crop: Optional[bool] = field(default=True, metadata={"help": "random crop start (else from 0)"})
    pad_audio: Optional[bool] = field(default=False, metadata={"help": "pad to the longest clip instead of cropping"})
    fine_tuning: bool = field(default=False, metadata={"help": "one target dictionary (fine-tuning)"})
    numpy_memmap_label: Optional[bool] = field(
        default=False, metadata={"help": "labels in {split}.{label}.npy (rows padded with -1), memory-mapped"}
    )
    augmentation_effects: Optional[str] = field(
        default="[]", metadata={"help": "list of random_mute, random_Gaussian, reverse_polarity"}
    )
    augmentation_probs: Optional[str] = field(default="[]", metadata={"help": "probability of each effect"})
    dynamic_crops: Optional[str] = field(
        default="[]", metadata={"help": "max clip seconds per stage, e.g. [5, 10]"}
    )
    dynamic_crops_epoches: Optional[str] = field(
        default="[]", metadata={"help": "first epoch of each dynamic_crops stage, starting at 1"}
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
    compile_step: bool = field(
        default=False,
        metadata={"help": "torch.compile the mert criterion's step (forward + loss; fullgraph, inductor); "
                          "the first steps compile; a GPU lever"},
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
