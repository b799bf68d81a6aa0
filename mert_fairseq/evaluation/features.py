"""Per-layer MERT features for audio files, from a fairseq checkpoint or an exported HF folder.

    extractor = load_feature_extractor(checkpoint="ckpt.pt")          # or hf_model="exported_folder"
    feats = extractor.extract_file("song.flac", layers=[0, 6, 12])    # (3, frames, D) float32

Audio of any sampling rate and channel count is read with soundfile (channel mean, band-limited
resampling to the model's rate); packed manifest rows (`shard.zip:offset:length`) are read in place.
When the model was trained with `task.normalize`, the whole file is normalised to zero mean / unit
variance before the model sees it (as the exported HF preprocessor, `do_normalize`, normalises each input).

Whole-file features are the default where they fit: a file goes through the model in one pass when the
first CNN block's output (channels x samples / stride x 4 bytes) stays under `WHOLE_FILE_BYTES` (1 GiB:
109 s for the 512-channel CNN of MERT 95M/330M). Longer files, or any file with an explicit
`window_seconds` > 0, are processed in windows and the frames concatenated; `window_seconds` <= 0 always
takes the whole file. Window i covers samples [i*W, (i+1)*W + (receptive field - stride)) with W a multiple
of the CNN stride, so window i yields exactly W / stride frames and the concatenation has the same frames,
at the same positions, as the whole-file pass. The CNN output is then the whole-file pass's (within 1e-5):
a group-norm CNN normalises every window with the whole file's statistics, computed in a first pass
(`whole_file_statistics`). What differs is the context: the transformer attends only within a window
(and the positional convolution and a CQT input see zeros beyond it). A last window shorter than half a
window is merged into the previous one.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mert_fairseq.data.audio import resample
from mert_fairseq.data.audio_reader import audio_info, parse_packed, read_window
from mert_fairseq.models.cnn_features import conv_output_length, receptive_field
from mert_fairseq.prep.pack import member_names

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif")
WHOLE_FILE_BYTES = 1 << 30  # first CNN block output of a whole-file pass at most this large (else windows)
AUTO_WINDOW_SECONDS = 30.0  # the window length for files over that size


class FeatureExtractionError(RuntimeError):
    """Extraction failed for one input; the message names the file."""


class FixedStatisticsNorm(nn.Module):
    """A GroupNorm's affine transform with given per-group statistics (in fp32, as fairseq's Fp32GroupNorm)."""

    def __init__(self, norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor) -> None:
        super().__init__()
        self.norm = norm
        repeat = norm.num_channels // norm.num_groups
        self.register_buffer("mean", mean.float().repeat_interleave(repeat)[:, None])  # C x 1
        self.register_buffer("inv_std", torch.rsqrt(var.float() + norm.eps).repeat_interleave(repeat)[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B x C x T
        y = (x.float() - self.mean) * self.inv_std
        if self.norm.affine:
            y = y * self.norm.weight.float()[:, None] + self.norm.bias.float()[:, None]
        return y.to(x.dtype)


class MERTFeatureExtractor:
    """Wraps a fairseq `mert` model or an HF MERT model; `hidden_states(wavs)` gives (N+1) x T_i x D per clip.
    The audio is fed in the model's dtype (fp32, or fp16/bf16 after `model.half()`/`.bfloat16()`)."""

    def __init__(self, backend: str, model: torch.nn.Module, sample_rate: int, normalize: bool,
                 conv_kernels: Sequence[int], conv_strides: Sequence[int], num_layers: int,
                 device: str | torch.device = "cpu") -> None:
        self.backend, self.model = backend, model.eval().to(device)
        self.sample_rate, self.normalize, self.device = int(sample_rate), bool(normalize), torch.device(device)
        self.conv_kernels, self.conv_strides = list(conv_kernels), list(conv_strides)
        self.stride = int(np.prod(self.conv_strides))
        self.receptive_field = receptive_field(self.conv_kernels, self.conv_strides)
        self.num_layers = int(num_layers)
        self.first_conv = next(m for m in model.feature_extractor.modules() if isinstance(m, nn.Conv1d))

    # ------------------------------------------------------------------ model call
    @torch.no_grad()
    def hidden_states(self, wavs: Sequence[np.ndarray]) -> List[torch.Tensor]:
        """Mono waveforms [L_i] (at the model rate, normalised if needed) -> per clip (N+1) x T_i x D on CPU,
        fp32. Clips of different lengths run as one right-padded batch with its mask: each clip's features are
        those it has alone (tests/test_padded_batches.py)."""
        dtype = next(self.model.parameters()).dtype
        lengths = [len(w) for w in wavs]
        x = torch.zeros(len(wavs), max(lengths), dtype=torch.float32)
        for b, w in enumerate(wavs):
            x.numpy()[b, : lengths[b]] = w
        real = torch.arange(x.shape[1])[None, :] < torch.tensor(lengths)[:, None]  # B x L
        x, real = x.to(self.device, dtype), real.to(self.device)
        padded = min(lengths) < max(lengths)
        if self.backend == "fairseq":
            states, _ = self.model.extract_hidden_states(x, padding_mask=~real if padded else None)
        else:
            states = self.model(x, attention_mask=real.long() if padded else None, output_hidden_states=True
                                ).hidden_states
        states = torch.stack([s.float() for s in states], dim=1).cpu()  # B x (N+1) x T x D
        return [states[b, :, : self.num_frames(n)] for b, n in enumerate(lengths)]

    def num_frames(self, num_samples: int) -> int:
        return conv_output_length(num_samples, self.conv_kernels, self.conv_strides)

    def first_block_bytes(self, num_samples: int) -> int:
        """Bytes of the first CNN block's fp32 output for one clip of num_samples."""
        return self.first_conv.out_channels * 4 * max(num_samples, 0) // self.conv_strides[0]

    def windows(self, num_samples: int, window_seconds: Optional[float] = None) -> List[Tuple[int, int]]:
        """Sample ranges [start, end) of the windows (see the module docstring); None: whole file if it fits."""
        if window_seconds is None:
            window_seconds = 0.0 if self.first_block_bytes(num_samples) <= WHOLE_FILE_BYTES else AUTO_WINDOW_SECONDS
        if window_seconds <= 0:
            return [(0, num_samples)]
        W = max(1, round(window_seconds * self.sample_rate / self.stride)) * self.stride
        W = max(W, self.stride * max(1, -(-self.receptive_field // self.stride)))  # at least one receptive field
        lookahead = self.receptive_field - self.stride
        starts = list(range(0, num_samples, W))
        if len(starts) > 1 and num_samples - starts[-1] < max(W // 2, self.receptive_field):
            starts.pop()  # merge a short tail into the previous window
        return [(s, min(s + W + lookahead, num_samples) if i + 1 < len(starts) else num_samples)
                for i, s in enumerate(starts)]

    # ------------------------------------------------------------------ public API
    def prepare(self, wav: np.ndarray) -> np.ndarray:
        """Apply the training-time waveform normalisation (over this waveform) when the model used it."""
        wav = np.asarray(wav, dtype=np.float32)
        if self.normalize:
            wav = F.layer_norm(torch.from_numpy(wav).double(), wav.shape).float().numpy()
        return wav

    @contextlib.contextmanager
    def whole_file_statistics(self, wav: np.ndarray):
        """Within the context, the CNN's GroupNorm (group-norm CNN) normalises with the statistics of the whole
        `wav`, computed here in blocks of the first block's convolution (fp64 sums): a window's CNN output is
        then the whole-file pass's. A layer-norm CNN needs nothing."""
        found = [(n, m) for n, m in self.model.feature_extractor.named_modules() if isinstance(m, nn.GroupNorm)]
        if not found:
            yield
            return
        (name, norm), = found
        k, s = self.first_conv.kernel_size[0], self.first_conv.stride[0]
        block = s * max(1, (64 << 20) // self.first_conv.out_channels)  # ~256 MB of fp32 block-0 output
        total = total_sq = 0.0
        frames = 0
        with torch.no_grad():
            for start in range(0, len(wav) - k + 1, block):
                x = torch.from_numpy(wav[start: start + block + k - s]).to(self.device, self.first_conv.weight.dtype)
                y = self.first_conv(x[None, None])[0].double()  # C x frames of this block
                total, total_sq, frames = total + y.sum(-1), total_sq + y.pow(2).sum(-1), frames + y.shape[-1]
        G = norm.num_groups
        mean = total.view(G, -1).sum(-1) / (frames * (norm.num_channels // G))
        var = total_sq.view(G, -1).sum(-1) / (frames * (norm.num_channels // G)) - mean.pow(2)
        parent_name, _, attr = name.rpartition(".")
        parent = self.model.feature_extractor.get_submodule(parent_name)
        setattr(parent, attr, FixedStatisticsNorm(norm, mean, var))
        try:
            yield
        finally:
            setattr(parent, attr, norm)

    def check_waveform(self, wav: np.ndarray) -> np.ndarray:
        """A mono float32 waveform at least one receptive field long, or ValueError."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"expected a mono waveform [samples], got shape {wav.shape}")
        if len(wav) < self.receptive_field:
            raise ValueError(f"audio too short: {len(wav)} samples < the model's receptive field "
                             f"({self.receptive_field} samples at {self.sample_rate} Hz)")
        return wav

    def extract(self, wav: np.ndarray, layers: Optional[Sequence[int]] = None, reduce: str = "frame",
                window_seconds: Optional[float] = None) -> np.ndarray:
        """Mono waveform at the model rate -> (len(layers), T, D) ("frame") or (len(layers), D) ("mean")."""
        return self.extract_many([wav], layers, reduce, window_seconds)[0]

    def extract_many(self, wavs: Sequence[np.ndarray], layers: Optional[Sequence[int]] = None, reduce: str = "frame",
                     window_seconds: Optional[float] = None) -> List[np.ndarray]:
        """`extract` for several clips: those that go through whole run as one padded batch (the same features
        as one at a time), the others window by window."""
        layers = self.check_layers(layers)
        if reduce not in ("frame", "mean"):
            raise ValueError(f"reduce={reduce!r}: expected 'frame' or 'mean'")
        wavs = [self.prepare(self.check_waveform(w)) for w in wavs]
        windows = [self.windows(len(w), window_seconds) for w in wavs]
        feats: List[Optional[torch.Tensor]] = [None] * len(wavs)
        whole = [i for i, w in enumerate(windows) if len(w) == 1]
        if whole:
            for i, states in zip(whole, self.hidden_states([wavs[i] for i in whole])):
                feats[i] = states[layers]
        for i in (i for i, w in enumerate(windows) if len(w) > 1):
            with self.whole_file_statistics(wavs[i]):
                feats[i] = torch.cat([self.hidden_states([wavs[i][a:b]])[0][layers] for a, b in windows[i]], dim=1)
        out = []
        for f, wav in zip(feats, wavs):  # f: len(layers) x T x D
            if f.shape[1] != self.num_frames(len(wav)):  # the window arithmetic guarantees this; keep it checked
                raise RuntimeError(f"windowed extraction produced {f.shape[1]} frames, expected "
                                   f"{self.num_frames(len(wav))}")
            out.append((f.mean(dim=1) if reduce == "mean" else f).numpy().astype(np.float32, copy=False))
        return out

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """Any audio file (any rate, any channel count) -> mono waveform at the model rate."""
        wav, sr = read_window(path)
        return resample(wav, sr, self.sample_rate)

    def extract_file(self, path: str | os.PathLike, **kwargs) -> np.ndarray:
        """Any audio file (any rate, any channel count) -> features; errors name the file."""
        self.check_layers(kwargs.get("layers"))  # usage errors are not the file's fault
        if kwargs.get("reduce", "frame") not in ("frame", "mean"):
            raise ValueError(f"reduce={kwargs['reduce']!r}: expected 'frame' or 'mean'")
        try:
            return self.extract(self.load(path), **kwargs)
        except Exception as exc:
            raise FeatureExtractionError(f"{path}: {exc}") from exc

    def check_layers(self, layers: Optional[Sequence[int]]) -> List[int]:
        if layers is None:
            return list(range(self.num_layers + 1))
        bad = [l for l in layers if not 0 <= l <= self.num_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range: this model has hidden states 0..{self.num_layers}")
        return list(layers)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_feature_extractor(checkpoint: Optional[str] = None, hf_model: Optional[str] = None,
                           device: str = "cpu", dtype: str = "float32") -> MERTFeatureExtractor:
    """From a fairseq checkpoint (`checkpoint`, whatever precision it was trained in) or an exported HF
    folder (`hf_model`), in eval mode, with weights in `dtype` (float32, float16 or bfloat16; the CQT
    teacher and CQT input front end compute in fp32 whatever the dtype)."""
    if (checkpoint is None) == (hf_model is None):
        raise ValueError("give exactly one of checkpoint / hf_model")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if checkpoint is not None:
        from mert_fairseq.checkpoint.model_loading import load_mert_model
        from mert_fairseq.common.config_values import parse_conv_layers

        model, task_cfg = load_mert_model(checkpoint)
        conv = parse_conv_layers(model.cfg.conv_feature_layers)
        return MERTFeatureExtractor("fairseq", model.to(DTYPES[dtype]), task_cfg.sample_rate, task_cfg.normalize,
                                    [c[1] for c in conv], [c[2] for c in conv], model.cfg.encoder_layers, device)
    from transformers import AutoModel

    folder = Path(hf_model)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not an exported HF folder)")
    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True).to(DTYPES[dtype])
    cfg = model.config
    sample_rate, normalize = getattr(cfg, "sample_rate", None), False
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        pre_cfg = json.loads(pre.read_text())
        sample_rate = pre_cfg.get("sampling_rate", sample_rate)
        normalize = bool(pre_cfg.get("do_normalize", False))
    if sample_rate is None:
        raise ValueError(f"{folder}: no sampling rate in preprocessor_config.json or config.json")
    return MERTFeatureExtractor("hf", model, sample_rate, normalize, cfg.conv_kernel, cfg.conv_stride,
                                cfg.num_hidden_layers, device)


# ---------------------------------------------------------------------------------------------- inputs
def collect_inputs(inputs: Iterable[str | os.PathLike],
                   extensions: Sequence[str] = AUDIO_EXTENSIONS) -> List[Tuple[Path, Path]]:
    """Audio files, folders (searched recursively) or manifest .tsv files (line 1 = root, then
    `relpath<TAB>...`) -> [(audio path, output path relative to the output folder, ending in .npy)].
    Folders and manifests mirror their relative paths; single files use their base name."""
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    items: List[Tuple[Path, Path]] = []
    for inp in map(Path, inputs):
        if inp.is_dir():
            found = sorted(p for p in inp.rglob("*") if p.is_file() and p.suffix.lower() in exts)
            if not found:
                raise FeatureExtractionError(f"{inp}: no audio files ({', '.join(exts)}) in this folder")
            items += [(p, p.relative_to(inp).with_suffix(".npy")) for p in found]
        elif inp.suffix.lower() == ".tsv":
            if not inp.is_file():
                raise FeatureExtractionError(f"{inp}: manifest not found")
            lines = inp.read_text().splitlines()
            if not lines or not lines[0].strip():
                raise FeatureExtractionError(f"{inp}: empty manifest (line 1 must be the audio root folder)")
            root, shards = Path(lines[0].strip()), {}
            for n, line in enumerate(lines[1:], start=2):
                if not line.strip():
                    continue
                rel = Path(line.split("\t")[0])
                if rel.is_absolute() or ".." in rel.parts:
                    raise FeatureExtractionError(f"{inp}:{n}: path {rel} must be relative to the root, inside it")
                items.append((root / rel, _output_name(root, rel, f"{inp}:{n}", shards)))
        elif inp.is_file():
            items.append((inp, Path(inp.name).with_suffix(".npy")))
        else:
            raise FeatureExtractionError(f"{inp}: no such file or folder")
    seen = {}
    for audio, out in items:
        if out in seen and seen[out] != audio:
            raise FeatureExtractionError(f"{audio} and {seen[out]} would both be written to {out}")
        seen[out] = audio
    return items


def _output_name(root: Path, rel: Path, where: str, shards: dict) -> Path:
    """Output .npy name of a manifest row: its relpath, or for a packed row the member's name in its shard
    (the original relpath), so packed and unpacked manifests write the same files."""
    member = parse_packed(rel)
    if member is None:
        return rel.with_suffix(".npy")
    if member.shard not in shards:
        try:
            shards[member.shard] = member_names(root / member.shard)
        except Exception as exc:
            raise FeatureExtractionError(f"{where}: {root / member.shard}: cannot read shard ({exc})") from exc
    name = shards[member.shard].get((member.offset, member.length))
    if name is None:
        raise FeatureExtractionError(f"{where}: {rel}: no member of {member.shard} at that byte range")
    return Path(name).with_suffix(".npy")


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    from mert_fairseq.common.atomic_files import atomic_open

    with atomic_open(path, "wb") as f:
        np.save(f, array)


def parse_layers(text: str) -> Optional[List[int]]:
    """"all" -> None; "0,6,12" -> [0, 6, 12]; "4-6" ranges allowed."""
    if text.strip().lower() == "all":
        return None
    layers: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            layers += list(range(int(a), int(b) + 1))
        elif part:
            layers.append(int(part))
    if not layers:
        raise ValueError(f"--layers {text!r}: no layer given")
    return layers


def extract_to_folder(extractor: MERTFeatureExtractor, inputs: Sequence[str], output_dir: str | os.PathLike,
                      layers: Optional[Sequence[int]] = None, reduce: str = "frame",
                      window_seconds: Optional[float] = None, overwrite: bool = False, skip_errors: bool = False,
                      extensions: Sequence[str] = AUDIO_EXTENSIONS, progress: bool = True,
                      batch_size: int = 8) -> dict:
    """Write one .npy per input under output_dir. Files are sorted by duration and run `batch_size` at a time
    as one padded batch (the same features as one at a time; fewer where the batch's first CNN block output
    would pass WHOLE_FILE_BYTES). Returns {"written", "skipped", "failed": [messages]}."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected at least 1")
    layers = extractor.check_layers(layers)
    items = collect_inputs(inputs, extensions)
    out_root = Path(output_dir)
    todo = {rel: audio for audio, rel in items if overwrite or not (out_root / rel).exists()}  # a repeat: once
    todo = [(audio, rel) for rel, audio in todo.items()]
    summary = {"written": 0, "skipped": len(items) - len(todo), "failed": []}

    def failed(exc: Exception) -> None:
        if not skip_errors:
            raise exc
        logger.error("%s", exc)
        summary["failed"].append(str(exc))

    with tqdm(total=len(items), initial=summary["skipped"], desc="MERT features", unit="file",
              disable=not progress) as bar:
        for group in _length_groups(extractor, todo, batch_size):
            wavs, kept = [], []
            for audio, rel in group:
                try:
                    wavs.append(extractor.check_waveform(extractor.load(audio)))
                    kept.append((audio, rel))
                except Exception as exc:
                    failed(FeatureExtractionError(f"{audio}: {exc}"))
                    bar.update(1)
            if not kept:
                continue
            feats = extractor.extract_many(wavs, layers=layers, reduce=reduce, window_seconds=window_seconds)
            for (audio, rel), f in zip(kept, feats):
                save_npy_atomic(out_root / rel, f)
            summary["written"] += len(kept)
            bar.update(len(kept))
    return summary


def _length_groups(extractor: MERTFeatureExtractor, items: List[Tuple[Path, Path]], batch_size: int):
    """Items sorted by duration (from the header; unreadable files first, they fail when read), cut into groups
    of at most batch_size whose padded batch keeps the first CNN block output within WHOLE_FILE_BYTES."""
    def samples(audio: Path) -> int:
        try:
            frames, sr, _ = audio_info(audio)
            return int(frames * extractor.sample_rate / sr)
        except Exception:
            return 0

    sized = sorted(((samples(a), a, r) for a, r in items), key=lambda t: t[0])
    group, longest = [], 0
    for n, audio, rel in sized:
        fits = extractor.first_block_bytes(max(n, longest)) * (len(group) + 1) <= WHOLE_FILE_BYTES
        if group and (len(group) == batch_size or not fits):
            yield group
            group, longest = [], 0
        group.append((audio, rel))
        longest = max(longest, n)
    if group:
        yield group


# ----------------------------------------------------------------------------- command line

CLI_DESCRIPTION = """Extract per-layer MERT features to one .npy per audio input.

INPUT: audio files, folders (searched recursively) or manifest .tsv files (line 1 = audio root).
Output names mirror the inputs (folder/manifest relative paths, or the file's base name) with .npy;
arrays are float32 (layers, frames, dim) for --reduce frame, (layers, dim) for --reduce mean.
Files are written atomically; existing outputs are kept unless --overwrite (so a run can be resumed).
Any sampling rate and channel count is accepted (channel mean, resampled to the model's rate)."""


def build_parser():
    import argparse

    p = argparse.ArgumentParser(description=CLI_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="audio files, folders or manifest .tsv files")
    p.add_argument("--out-dir", "--output-dir", required=True, help="folder the .npy files are written to")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="fairseq checkpoint of a `mert` model")
    source.add_argument("--hf-model", help="exported Hugging Face folder (scripts/convert_to_hf.py)")
    p.add_argument("--layers", default="all", help="'all' or a comma list of hidden-state indices "
                   "(0 = input of the transformer, N = last layer); ranges like 4-6 allowed")
    p.add_argument("--reduce", choices=["frame", "mean"], default="frame",
                   help="frame: (layers, frames, dim); mean: average over time, (layers, dim)")
    p.add_argument("--window-seconds", type=float, default=None,
                   help="process files in windows of this length (<= 0: whole file at once; default: the whole "
                        f"file where its first CNN block output fits {WHOLE_FILE_BYTES >> 20} MiB, else "
                        f"{AUTO_WINDOW_SECONDS:g} s windows; a group-norm CNN uses the whole file's statistics)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="files of similar duration per model call (one padded batch; the same features as one "
                        "at a time)")
    p.add_argument("--device", default="cpu", help="torch device of the model")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="weights and audio in this precision (outputs stay float32)")
    p.add_argument("--extensions", default=",".join(AUDIO_EXTENSIONS), help="audio extensions searched in folders")
    p.add_argument("--overwrite", action="store_true", help="recompute existing .npy files")
    p.add_argument("--skip-errors", action="store_true",
                   help="log unreadable/too short files and go on (exit status 1 at the end)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """scripts/extract_features.py: 0 when every input was written or kept, 1 when some failed, 2 for errors."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        layers = parse_layers(args.layers)
        extractor = load_feature_extractor(checkpoint=args.checkpoint, hf_model=args.hf_model, device=args.device,
                                           dtype=args.dtype)
        summary = extract_to_folder(extractor, args.inputs, args.out_dir, layers=layers, reduce=args.reduce,
                                    window_seconds=args.window_seconds, overwrite=args.overwrite,
                                    skip_errors=args.skip_errors, extensions=args.extensions.split(","),
                                    batch_size=args.batch_size)
    except (FeatureExtractionError, ValueError, FileNotFoundError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    print(f"written {summary['written']}, skipped (already there) {summary['skipped']}, "
          f"failed {len(summary['failed'])} -> {args.out_dir}")
    for msg in summary["failed"]:
        print(f"  failed: {msg}", file=sys.stderr)
    return 1 if summary["failed"] else 0
