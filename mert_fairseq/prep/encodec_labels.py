"""EnCodec 24 kHz codes as MERT acoustic-teacher labels.

Output for a manifest ``{split}.tsv``: ``{label_dir}/{split}.encodec_{i}`` for each codebook i (one
line per manifest row, same order, space-separated codes) and ``{label_dir}/dict.encodec_{i}.txt``
(every code 0..1023 with its count in that split, fairseq Dictionary format -> 4 + 1024 symbols).

- Rate: 6 kbps = 8 codebooks x 1024 codes (10 bits) at 75 Hz; ``n_codebook`` codebooks use
  ``0.75 * n_codebook`` kbps (2, 4, 8, 16 or 32 codebooks).
- Frame rule: a file of n samples gets ``ceil(n / 320)`` frames; frame j starts at sample 320 j.
- Weights: ``encodec_24khz-d7cc33bc.th`` from torch's hub cache (``$TORCH_HOME/hub/checkpoints``),
  downloaded there when missing (needs internet; offline, a missing file is one error saying where to put
  it), or ``--checkpoint`` loads a local state dict (e.g. a copied ``encodec_24khz-d7cc33bc.th``), or
  ``--random-init`` builds a seeded random model (tests, offline runs; codes carry no meaning).
- Chunking: every file is encoded in chunks of ``chunk_seconds`` (a multiple of 320 samples),
  each with ``context_seconds`` of preceding audio whose frames are dropped. The 24 kHz model is
  causal (left padding only; an LSTM carries state forward), so no right context is needed, and
  each chunk is zero-padded to a multiple of 320 samples, which makes its codes independent of
  the other chunks in its batch. Measured with random weights on a 20 s signal cut in 5 s chunks:
  without context the encoder output differs from whole-file encoding for ~20 frames after each
  seam (relative error 0.13 at the seam, 2e-4 after 20 frames); with 0.25 s of context it is
  3.5e-4 at the seam, and with >= 0.5 s it is at float-noise level (~2e-7) everywhere. The default
  context is 1 s (75 frames). Codes then equal whole-file codes except for rare near-ties of the
  nearest-code search flipped by float noise (2-3 of 1500 frames), exactly as often as encoding
  the same whole file in a batch of two, or with another thread count, flips them.
- Resumable: each shard of consecutive rows (about ``shard_seconds`` of audio) is saved to
  ``{label_dir}/.{split}.encodec.partial/`` when done; a re-run with the same manifest and
  settings skips finished shards; the final files are assembled atomically at the end. A
  finished split leaves ``.{split}.encodec.done.json``; a re-run with the same settings is a no-op.
- Several jobs: ``--shard-id i --num-shards n`` (or a Slurm array / torchrun rank) labels a
  contiguous range of resume shards and writes ``{split}.encodec_{k}.part{i}of{n}``;
  ``scripts/merge_label_parts.py --name encodec`` joins the parts (see ``merge_parts``).
"""
from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from mert_fairseq.data.audio import AudioError, to_mono
from mert_fairseq.prep.common import (
    LABEL_HOP, SAMPLE_RATE, OutputError, Part, add_shard_args, file_sha256, hub_file, num_label_frames, parse_list,
    plan_blocks, resolve_part, setup_logging, split_name,
)
from mert_fairseq.data.manifest import Manifest, ManifestError, ManifestRow, check_audio, read_manifest
from mert_fairseq.prep.merge_parts import LabelOutputs, write_labels

log = logging.getLogger(__name__)

CODEBOOK_SIZE = 1024
KBPS_PER_CODEBOOK = 0.75  # 10 bits x 75 Hz
SUPPORTED_CODEBOOKS = (2, 4, 8, 16, 32)  # the 24 kHz model's bandwidths 1.5, 3, 6, 12, 24 kbps
PRETRAINED_FILE = "encodec_24khz-d7cc33bc.th"  # encodec's published 24 kHz weights (hash prefix in the name)


@dataclass(frozen=True)
class EncodecSettings:
    """What determines the codes (saved with partial work so a resume never mixes settings)."""

    n_codebook: int = 8
    chunk_samples: int = 30 * SAMPLE_RATE
    context_samples: int = SAMPLE_RATE
    shard_samples: int = 600 * SAMPLE_RATE
    model_id: str = "encodec_24khz"


def samples_multiple_of_hop(seconds: float, name: str) -> int:
    """Seconds -> samples rounded to a multiple of 320 (error when a chunk would be empty)."""
    samples = int(round(seconds * SAMPLE_RATE / LABEL_HOP)) * LABEL_HOP
    if samples < 0 or (name == "chunk" and samples == 0):
        raise ValueError(f"--{name}-seconds {seconds} gives {samples} samples; need a positive multiple of 320")
    return samples


# ----------------------------------------------------------------------------- model


def bandwidth_for(n_codebook: int) -> float:
    return n_codebook * KBPS_PER_CODEBOOK


def load_encodec(
    checkpoint: str | None = None, random_init: bool = False, seed: int = 0, n_codebook: int = 8, device: str = "cpu"
):
    """The EnCodec 24 kHz model in eval mode, set to the bandwidth of `n_codebook` codebooks."""
    from encodec import EncodecModel  # imports torchaudio; keep it off the module import path

    if random_init and checkpoint:
        raise ValueError("give either --checkpoint or --random-init, not both")
    if n_codebook not in SUPPORTED_CODEBOOKS:
        raise ValueError(f"--n_codebook {n_codebook} is not supported; choose one of {SUPPORTED_CODEBOOKS}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's weight_norm deprecation notice
        if random_init:
            model = random_encodec(seed)
        elif checkpoint:
            model = EncodecModel.encodec_model_24khz(pretrained=False)
            model.load_state_dict(_load_state_dict(checkpoint))
        else:
            model = EncodecModel.encodec_model_24khz(pretrained=False)
            model.load_state_dict(_load_state_dict(pretrained_weights()))
    if model.sample_rate != SAMPLE_RATE or model.channels != 1:
        raise ValueError(f"expected a 24 kHz mono EnCodec model, got {model.sample_rate} Hz, {model.channels} ch")
    model.set_target_bandwidth(bandwidth_for(n_codebook))
    return model.eval().to(device)


def pretrained_weights() -> str:
    """Path of the published 24 kHz weights in torch's hub cache, downloaded when missing."""
    from encodec.model import ROOT_URL

    return str(hub_file(ROOT_URL + PRETRAINED_FILE, "pass --checkpoint /path/to/" + PRETRAINED_FILE))


def _load_state_dict(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot load an EnCodec state dict ({exc})") from exc
    return state.get("model", state) if isinstance(state, dict) else state


def random_encodec(seed: int = 0):
    """A seeded random-weight EnCodec 24 kHz model with usable codebooks.

    encodec initialises codebooks to zeros (they are k-means initialised during training), which
    would map every frame to code 0; here codebook k is filled with residual vectors (after the
    first k codebooks) of mixtures of the encoded frames of a seeded 4 s noise probe, so codes
    spread over many values in every codebook.
    """
    from encodec import EncodecModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EncodecModel.encodec_model_24khz(pretrained=False)
    generator = torch.Generator().manual_seed(seed)
    probe = torch.randn(1, 1, 4 * SAMPLE_RATE, generator=generator)  # 300 frames: quick to encode
    probe *= torch.rand(1, 1, 40, generator=generator).repeat_interleave(2400, dim=-1)  # varying loudness
    with torch.inference_mode():
        frames = model.encoder(probe)[0]  # [D, 300]
        # 4096 random mixtures of two frames: more points than codes, so residuals stay informative
        pairs = torch.randint(0, frames.shape[1], (2, 4096), generator=generator)
        weight = torch.rand(4096, generator=generator)
        residual = frames[:, pairs[0]] * weight + frames[:, pairs[1]] * (1 - weight)  # [D, 4096]
        for layer in model.quantizer.vq.layers:
            book = layer._codebook
            picks = torch.randint(0, residual.shape[1], (book.codebook_size,), generator=generator)
            jitter = 1e-3 * residual.std() * torch.randn(book.embed.shape, generator=generator)
            book.embed.copy_(residual[:, picks].T + jitter)
            book.embed_avg.copy_(book.embed)
            book.inited.fill_(1)
            residual = residual - layer.decode(layer.encode(residual[None]))[0]
    return model


# ----------------------------------------------------------------------------- chunked encoding


@dataclass(frozen=True)
class Piece:
    """Samples [start, end) of row `row` (context included); its first `skip` frames are context."""

    row: int
    start: int
    end: int
    skip: int

    @property
    def first_frame(self) -> int:
        return self.start // LABEL_HOP + self.skip


def chunk_pieces(row: int, num_samples: int, chunk: int, context: int) -> list[Piece]:
    """Cut one file into chunks of `chunk` samples, each preceded by up to `context` samples."""
    if chunk <= 0 or chunk % LABEL_HOP or context < 0 or context % LABEL_HOP:
        raise ValueError(f"chunk ({chunk}) and context ({context}) must be multiples of {LABEL_HOP} samples")
    pieces = []
    for begin in range(0, num_samples, chunk):
        start = max(0, begin - context)
        pieces.append(Piece(row, start, min(num_samples, begin + chunk), (begin - start) // LABEL_HOP))
    return pieces


def read_segment(path: Path, start: int, end: int) -> np.ndarray:
    """Mono float32 samples [start, end) of a 24 kHz file."""
    try:
        with sf.SoundFile(str(path)) as f:
            if f.samplerate != SAMPLE_RATE:
                raise AudioError(f"{path}: sample rate {f.samplerate}, expected {SAMPLE_RATE}")
            f.seek(start)
            wav = f.read(end - start, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: cannot read samples {start}:{end} ({exc})") from exc
    if len(wav) != end - start:
        raise AudioError(f"{path}: expected samples {start}:{end}, file ends at {start + len(wav)}")
    return to_mono(wav)


def encode_batch(model, waves: Sequence[np.ndarray], device: str = "cpu") -> list[np.ndarray]:
    """Codes [n_codebook, ceil(len / 320)] (int16) for each waveform, encoded as one batch.

    Each waveform is zero-padded to a multiple of 320 samples; since the model is causal, the
    further padding up to the longest waveform of the batch does not change its codes.
    """
    padded = max(num_label_frames(len(w)) for w in waves) * LABEL_HOP
    batch = torch.zeros(len(waves), 1, padded)
    for i, wav in enumerate(waves):
        batch[i, 0, : len(wav)] = torch.from_numpy(wav)
    with torch.inference_mode():
        codes = model.encode(batch.to(device))[0][0].cpu().numpy()  # [B, K, T]
    return [codes[i, :, : num_label_frames(len(w))].astype(np.int16) for i, w in enumerate(waves)]


def _batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def encode_pieces(
    model, pieces: Sequence[Piece], read: Callable[[Piece], np.ndarray], outs: Sequence[np.ndarray],
    batch_size: int = 8, device: str = "cpu", progress: Callable[[float], None] | None = None,
) -> None:
    """Encode `pieces` in batches and write their non-context frames into ``outs[piece.row]``."""
    for batch in _batched(pieces, batch_size):
        for piece, codes in zip(batch, encode_batch(model, [read(p) for p in batch], device)):
            kept = codes[:, piece.skip :]
            outs[piece.row][:, piece.first_frame : piece.first_frame + kept.shape[1]] = kept
        if progress:
            progress(sum(p.end - p.start - p.skip * LABEL_HOP for p in batch) / SAMPLE_RATE)


def encode_rows(
    model, manifest: Manifest, rows: Sequence[ManifestRow], settings: EncodecSettings,
    batch_size: int = 8, device: str = "cpu", progress: Callable[[float], None] | None = None,
) -> list[np.ndarray]:
    """Codes [n_codebook, ceil(n / 320)] for each row; pieces are batched longest first."""
    pieces = [
        p for i, row in enumerate(rows)
        for p in chunk_pieces(i, row.num_samples, settings.chunk_samples, settings.context_samples)
    ]
    pieces.sort(key=lambda p: p.end - p.start, reverse=True)
    outs = [np.zeros((settings.n_codebook, num_label_frames(r.num_samples)), np.int16) for r in rows]
    read = lambda p: read_segment(manifest.audio_path(rows[p.row]), p.start, p.end)  # noqa: E731
    encode_pieces(model, pieces, read, outs, batch_size, device, progress)
    return outs


def encode_waveform(
    model, wav: np.ndarray, settings: EncodecSettings, batch_size: int = 8, device: str = "cpu"
) -> np.ndarray:
    """Chunked codes [n_codebook, ceil(len / 320)] of one in-memory 24 kHz mono waveform."""
    out = np.zeros((settings.n_codebook, num_label_frames(len(wav))), np.int16)
    pieces = chunk_pieces(0, len(wav), settings.chunk_samples, settings.context_samples)
    encode_pieces(model, pieces, lambda p: wav[p.start : p.end], [out], batch_size, device)
    return out


# ----------------------------------------------------------------------------- shards and resume


def encodec_outputs(out_root: str | Path, split: str, n_codebook: int, part: Part = Part()) -> LabelOutputs:
    labels = tuple(f"encodec_{i}" for i in range(n_codebook))
    return LabelOutputs(Path(out_root), split, "encodec", labels, CODEBOOK_SIZE, part)


def _identity(manifest: Manifest, settings: EncodecSettings) -> dict:
    return {"manifest": str(manifest.path.resolve()), "manifest_sha256": file_sha256(manifest.path), **asdict(settings)}


def encode_manifest(
    model, manifest: Manifest, out_root: str | Path, settings: EncodecSettings, batch_size: int = 8,
    device: str = "cpu", on_shard_done: Callable[[int], None] | None = None, part: Part = Part(),
) -> float | None:
    """Encode the rows of `manifest` (all, or those of job `part`), resuming finished shards;
    returns audio-hours per hour, or None when the labels were already complete.

    Resume shards of about ``settings.shard_samples`` are planned over the whole manifest and
    job i of n takes shards ``[i * S // n, (i + 1) * S // n)``, so every chunk is encoded in the
    same batch whatever n is, and merged parts equal a single job's files byte for byte.
    """
    out = encodec_outputs(out_root, split_name(manifest.path), settings.n_codebook, part)
    identity = _identity(manifest, settings)
    if out.finished(identity):
        log.info("%s: EnCodec labels in %s are complete for these settings; nothing to do", out.split, out_root)
        return None
    all_shards = plan_blocks([r.num_samples for r in manifest.rows], settings.shard_samples)
    shards = all_shards[part.slice(len(all_shards)).start : part.slice(len(all_shards)).stop]
    rows = range(shards[0].start, shards[-1].stop) if shards else range(0)
    check_audio(Manifest(manifest.path, manifest.root, manifest.rows[rows.start : rows.stop]), SAMPLE_RATE)
    seconds = sum(manifest.rows[j].num_samples for j in rows) / SAMPLE_RATE
    bar = tqdm(total=seconds, unit="audio-s", desc=f"encodec {out.split}{part.suffix}")
    start, encoded = time.perf_counter(), []

    def encode(shard: range) -> list[np.ndarray]:
        shard_rows = [manifest.rows[j] for j in shard]
        encoded.append(sum(r.num_samples for r in shard_rows) / SAMPLE_RATE)
        return encode_rows(model, manifest, shard_rows, settings, batch_size, device, bar.update)

    with bar:
        computed = write_labels(out, identity, manifest, rows, shards, encode, on_shard_done)
    rate = sum(encoded) / max(time.perf_counter() - start, 1e-9)
    log.info("%s%s: encoded %.3f h of audio at %.0f audio-hours/hour (%d of %d shards resumed)", out.split,
             part.suffix, sum(encoded) / 3600, rate, len(shards) - len(computed or ()), len(shards))
    return rate


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest-dir", "--manifest-path", "--manifest_path", required=True,
                   help="folder holding the {split}.tsv manifests")
    splits = p.add_mutually_exclusive_group()
    splits.add_argument("--splits", help="comma-separated splits to label (default: train)")
    splits.add_argument("--manifest-file-name", "--manifest_file_name",
                        help="the original's form of --splits: manifest file names, comma-separated (train.tsv,valid.tsv)")
    p.add_argument("--label-dir", "--out-root", "--out_root", required=True,
                   help="label folder written: {split}.encodec_{i} and dict.encodec_{i}.txt")
    p.add_argument("--codebook-size", "--codebook_size", type=int, default=CODEBOOK_SIZE,
                   help=f"codes per codebook; EnCodec 24 kHz has {CODEBOOK_SIZE} (any other value is an error)")
    p.add_argument("--n-codebook", "--n_codebook", type=int, default=8,
                   help=f"codebooks (label streams) to write, one of {SUPPORTED_CODEBOOKS}; 8 codebooks = 6 kbps")
    p.add_argument("--checkpoint", help=f"local EnCodec 24 kHz state dict, e.g. a copy of {PRETRAINED_FILE} "
                   "(default: that file from torch's hub cache, $TORCH_HOME/hub/checkpoints, downloaded when missing)")
    p.add_argument("--random-init", action="store_true", help="seeded random weights (tests/offline only)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device of the EnCodec model (default: cuda when available)")
    p.add_argument("--batch-size", type=int, help="chunks per forward pass (default: 1 on CPU, fastest "
                   "there; 16 on GPU)")
    p.add_argument("--chunk-seconds", type=float, default=30.0, help="rounded to a multiple of 320 samples")
    p.add_argument("--context-seconds", type=float, default=1.0, help="left context per chunk, dropped")
    p.add_argument("--shard-seconds", type=float, default=600.0, help="audio per resumable shard")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    add_shard_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    batch_size = args.batch_size or (1 if args.device == "cpu" else 16)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.codebook_size != CODEBOOK_SIZE:
        log.error("--codebook_size must be %d: EnCodec 24 kHz codebooks have %d codes", CODEBOOK_SIZE, CODEBOOK_SIZE)
        return 2
    try:
        settings = EncodecSettings(
            n_codebook=args.n_codebook,
            chunk_samples=samples_multiple_of_hop(args.chunk_seconds, "chunk"),
            context_samples=samples_multiple_of_hop(args.context_seconds, "context"),
            shard_samples=max(1, int(args.shard_seconds * SAMPLE_RATE)),
            model_id=_model_id(args),
        )
        part = resolve_part(args.shard_id, args.num_shards)
        manifests = [read_manifest(Path(args.manifest_dir) / name) for name in _manifest_names(args)]
        model = load_encodec(args.checkpoint, args.random_init, args.seed, args.n_codebook, args.device)
        for manifest in manifests:
            encode_manifest(model, manifest, args.label_dir, settings, batch_size, args.device, part=part)
    except (ManifestError, AudioError, ValueError, OutputError) as exc:
        log.error("%s", exc)
        return 1
    return 0


def _manifest_names(args: argparse.Namespace) -> list[str]:
    """Manifest files named by --splits (train -> train.tsv) or by the original's --manifest_file_name."""
    if args.manifest_file_name:
        return parse_list(args.manifest_file_name)
    return [f"{split}.tsv" for split in parse_list(args.splits or "train")]


def _model_id(args: argparse.Namespace) -> str:
    if args.random_init:
        return f"random-init seed={args.seed}"
    if args.checkpoint:
        if not Path(args.checkpoint).is_file():
            raise ValueError(f"{args.checkpoint}: --checkpoint file not found")
        stat = Path(args.checkpoint).stat()
        return f"{Path(args.checkpoint).resolve()} size={stat.st_size} mtime={int(stat.st_mtime)}"
    return "encodec_24khz pretrained"
