"""Pack a manifest's audio files into a few large uncompressed ZIP shards, read in place.

Millions of small files strain cluster filesystems (inode quotas, metadata servers). `pack_manifest`
copies each audio file, byte for byte, as a member of a standard ZIP_STORED shard `{split}_{k:05d}.zip`
(at most `max_shard_bytes` each, unless one file alone is larger) and writes `{split}.tsv` whose rows
point into the shards with fairseq's stored-zip convention:

    /abs/out_dir
    train_00000.zip:BYTE_OFFSET:BYTE_LENGTH<TAB>num_samples

(the byte range is the member's complete audio file). Rows keep their order, so label files made for
the original manifest are used unchanged. Members are named by their original relpath; a relpath
listed twice is stored once. Any unzip tool can list or extract a shard.

With `pcm=True` (`--pcm`), compressed audio (FLAC, MP3, Ogg, 24-bit or float files: anything but
16-bit PCM and 32-bit float WAV, which are copied as they are) is decoded once and stored as an
uncompressed WAV member instead, so training reads a window with two preads instead of a decode.
The stored samples are exactly those the data loader would decode from the original file:
16-bit sources (FLAC, AIFF, ... of subtype PCM_16) become 16-bit WAV (lossless), all others 32-bit
float WAV (the float32 values libsndfile decodes; 2x the disk of 16-bit). `pcm_subtype="PCM_16"`
stores every source as 16-bit instead (half the disk of float; non-16-bit sources are then rounded
to 16 bits, i.e. no longer bit-identical to the original). Members keep their original name
(`song.flac` holds WAV data: readers go by the content), so labels and features keep their names.
Each decoded length must equal the manifest's num_samples.

Resumable: shards are written to a temporary file and renamed when complete, so a kill leaves whole
shards only; a rerun keeps every shard whose members match the plan and writes the rest. The plan
(which file goes to which shard) depends only on the manifest, the file sizes and the options.
"""
from __future__ import annotations

import logging
import os
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

from mert_fairseq.data.audio_reader import WAV_SUBTYPES, parse_packed, wav_layout
from mert_fairseq.data.manifest_index import read_manifest_index
from mert_fairseq.common.atomic_files import atomic_open

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_BYTES = 2 << 30  # 2 GiB
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same input gives the same shard bytes
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # ZIP local file header, 30 bytes
PCM_SUBTYPES = ("auto", *WAV_SUBTYPES)  # auto: 16-bit sources as PCM_16, the others as FLOAT
_BLOCK_FRAMES = 1 << 16  # frames decoded per step when converting to PCM


class PackError(ValueError):
    """A manifest or shard that cannot be packed or reused; the message names the file."""


def plan_shards(names: list[str], sizes: list[int], max_shard_bytes: int) -> list[list[int]]:
    """Greedy split of files (in order) into shards of at most max_shard_bytes (ZIP overhead included)."""
    shards, current, used = [], [], 0
    for i, (name, size) in enumerate(zip(names, sizes)):
        cost = size + 2 * len(name.encode()) + 150  # local + central headers, zip64 extras
        if current and used + cost > max_shard_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(i)
        used += cost
    if current:
        shards.append(current)
    return shards


def member_ranges(shard: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """{member name: (byte offset of its data, byte length)} of a ZIP_STORED shard."""
    ranges = {}
    with open(shard, "rb") as f, zipfile.ZipFile(f) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise PackError(f"{shard}: member {info.filename} is compressed; shards must be ZIP_STORED")
            f.seek(info.header_offset)
            header = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if header[0] != b"PK\x03\x04":
                raise PackError(f"{shard}: bad local header for member {info.filename}")
            name_len, extra_len = header[-2], header[-1]
            ranges[info.filename] = (info.header_offset + _LOCAL_HEADER.size + name_len + extra_len, info.file_size)
    return ranges


def member_names(shard: str | os.PathLike) -> dict[tuple[int, int], str]:
    """{(byte offset, byte length): member name} of a shard (inverse of `member_ranges`)."""
    return {rng: name for name, rng in member_ranges(shard).items()}


@dataclass(frozen=True)
class Source:
    """One file to store: copied byte for byte (`subtype` None) or decoded into a WAV of `subtype`."""
    path: Path
    size: int                      # bytes of the member
    where: str                     # 'manifest:line', for errors
    subtype: Optional[str] = None  # "PCM_16" / "FLOAT" when converted
    frames: int = 0
    channels: int = 0
    rate: int = 0


def wav_header(frames: int, channels: int, rate: int, subtype: str) -> bytes:
    """A canonical RIFF/WAVE header for `frames` frames of 16-bit PCM or 32-bit float samples
    (float files get the `fact` chunk the WAVE spec asks for)."""
    tag, dtype = WAV_SUBTYPES[subtype]
    width = np.dtype(dtype).itemsize
    data = frames * channels * width
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * width, channels * width, 8 * width)
    if subtype == "FLOAT":
        chunks = b"fmt " + struct.pack("<I", 18) + fmt + b"\0\0" + b"fact" + struct.pack("<II", 4, frames)
    else:
        chunks = b"fmt " + struct.pack("<I", 16) + fmt
    if 4 + len(chunks) + 8 + data > 0xFFFFFFFF:
        raise PackError(f"{frames} frames x {channels} channels do not fit a WAV file (4 GiB); "
                        "pack this file without --pcm")
    return b"RIFF" + struct.pack("<I", 4 + len(chunks) + 8 + data) + b"WAVE" + chunks + b"data" + struct.pack("<I", data)


def describe_source(src: Path, where: str, num_samples: int, pcm: bool, pcm_subtype: str = "auto") -> Source:
    """How `src` is stored: copied (no `pcm`, or a WAV the reader's fast path reads and `pcm_subtype`
    allows) or converted to 16-bit / float WAV (see the module docstring). Errors name `where`."""
    try:
        size = src.stat().st_size
        if not pcm:
            return Source(src, size, where)
        with open(src, "rb") as f:
            layout = wav_layout(f.read(4096))
    except OSError as exc:
        raise PackError(f"{where}: {src}: {exc.strerror or exc}") from exc
    if layout is not None and layout[0] + layout[1] <= size and pcm_subtype in ("auto", _dtype_subtype(layout[4])):
        return Source(src, size, where)
    try:
        info = sf.info(str(src))
    except Exception as exc:  # soundfile raises several types
        raise PackError(f"{where}: {src}: cannot read audio ({exc})") from exc
    if info.frames != num_samples:
        raise PackError(f"{where}: {src} has {info.frames} samples but the manifest says {num_samples} "
                        "(file changed after the manifest was written?)")
    subtype = pcm_subtype if pcm_subtype != "auto" else ("PCM_16" if info.subtype == "PCM_16" else "FLOAT")
    header = wav_header(info.frames, info.channels, info.samplerate, subtype)
    size = len(header) + info.frames * info.channels * np.dtype(WAV_SUBTYPES[subtype][1]).itemsize
    return Source(src, size, where, subtype, info.frames, info.channels, info.samplerate)


def _dtype_subtype(dtype: str) -> str:
    return next(k for k, (_, d) in WAV_SUBTYPES.items() if d == dtype)


def _write_pcm(src: Source, out) -> None:
    """Decode `src` block by block into `out` as a WAV file of `src.subtype` (header first)."""
    out.write(wav_header(src.frames, src.channels, src.rate, src.subtype))
    dtype, written = WAV_SUBTYPES[src.subtype][1], 0
    try:
        snd = sf.SoundFile(str(src.path))
    except (sf.SoundFileError, RuntimeError) as exc:
        raise PackError(f"{src.where}: {src.path}: cannot read audio ({exc})") from exc
    with snd:
        as_int = src.subtype == "PCM_16" and snd.subtype == "PCM_16"  # exact: no float round trip
        while written <= src.frames:
            try:
                block = snd.read(_BLOCK_FRAMES, dtype="int16" if as_int else "float32", always_2d=True)
            except (sf.SoundFileError, RuntimeError) as exc:
                raise PackError(f"{src.where}: {src.path}: cannot decode frames from {written} ({exc})") from exc
            if not len(block):
                break
            if src.subtype == "PCM_16" and not as_int:  # rounded to 16 bits (pcm_subtype=PCM_16)
                block = np.clip(np.rint(block * 32768.0), -32768, 32767)
            written += len(block)
            if written <= src.frames:
                out.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
    if written != src.frames:
        raise PackError(f"{src.where}: {src.path}: decoded {written} samples but its header and the manifest "
                        f"say {src.frames}")


def _write_shard(path: Path, members: list[tuple[str, Source]]) -> None:
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, src in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = src.size
            with zf.open(info, "w", force_zip64=info.file_size > 0x7FFF0000) as fout:
                if src.subtype is None:
                    with open(src.path, "rb") as fin:
                        shutil.copyfileobj(fin, fout, 1 << 20)
                else:
                    _write_pcm(src, fout)


def _reusable(path: Path, members: list[tuple[str, Source]]) -> dict | None:
    """Member ranges of an existing shard if it holds exactly the planned members, else None."""
    if not path.is_file():
        return None
    try:
        ranges = member_ranges(path)
    except (zipfile.BadZipFile, OSError, PackError) as exc:
        logger.warning("%s: unreadable shard, rewriting it (%s)", path, exc)
        return None
    planned = {name: src.size for name, src in members}
    if list(ranges) != list(planned) or any(ranges[n][1] != s for n, s in planned.items()):
        logger.warning("%s: holds other files than planned (input or --pcm changed?), rewriting it", path)
        return None
    return ranges


def _pack_shard(shard: Path, members: list[tuple[str, Source]]) -> dict[str, tuple[int, int]]:
    """Write (or keep, when complete) one planned shard -> its member ranges."""
    ranges = _reusable(shard, members)
    if ranges is not None:
        logger.info("keeping %s (already complete)", shard)
        return ranges
    logger.info("writing %s (%d files, %.1f MB)", shard, len(members), sum(s.size for _, s in members) / 1e6)
    _write_shard(shard, members)
    return member_ranges(shard)


def pack_manifest(manifest: str | os.PathLike, out_dir: str | os.PathLike,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, prefix: str | None = None,
                  pcm: bool = False, pcm_subtype: str = "auto", workers: int = 1) -> Path:
    """Pack the audio of `manifest` into shards under `out_dir`; returns the packed manifest path
    (`out_dir/{prefix}.tsv`, prefix defaulting to the manifest's stem, e.g. train). `pcm` stores
    compressed files decoded, as WAV of `pcm_subtype` (see the module docstring); `workers` processes
    write shards in parallel (the output does not depend on it)."""
    if pcm_subtype not in PCM_SUBTYPES:
        raise PackError(f"pcm_subtype {pcm_subtype!r}: expected one of {', '.join(PCM_SUBTYPES)}")
    pcm = pcm or pcm_subtype != "auto"
    manifest, out_dir = Path(manifest), Path(out_dir)
    prefix = prefix or manifest.stem
    index = read_manifest_index(manifest)
    root = Path(index.root)
    names = [index.name(r) for r in range(len(index))]
    first_row: dict[str, int] = {}
    for r, name in enumerate(names):
        first_row.setdefault(name, r)  # insertion order: first appearance
    unique = list(first_row)
    sources = []
    for name, r in first_row.items():
        where = f"{manifest}:{r + 2}"
        if parse_packed(name):
            raise PackError(f"{where}: {name} is already packed")
        sources.append(describe_source(root / name, where, int(index.sizes[r]), pcm, pcm_subtype))
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f".{prefix}_*.zip.*.tmp"):  # left by a killed run
        stale.unlink()
    plan = plan_shards(unique, [s.size for s in sources], max_shard_bytes)
    jobs = [(out_dir / f"{prefix}_{k:05d}.zip", [(unique[i], sources[i]) for i in members])
            for k, members in enumerate(plan)]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            all_ranges = list(pool.map(_pack_shard, *zip(*jobs)))
    else:
        all_ranges = [_pack_shard(shard, members) for shard, members in jobs]
    location: dict[str, str] = {}
    for (shard, _), ranges in zip(jobs, all_ranges):
        for name, (offset, length) in ranges.items():
            location[name] = f"{shard.name}:{offset}:{length}"
    packed = out_dir / f"{prefix}.tsv"
    with atomic_open(packed, "w") as f:
        f.write(f"{out_dir.resolve()}\n")
        for r, name in enumerate(names):
            f.write(f"{location[name]}\t{int(index.sizes[r])}\n")
    logger.info("%s: %d rows in %d shard(s)", packed, len(names), len(plan))
    return packed


def build_parser():
    import argparse

    p = argparse.ArgumentParser(description="Pack a manifest's audio into uncompressed ZIP shards and write a "
                                            "manifest of shard.zip:offset:length rows (labels stay valid).")
    p.add_argument("manifest", help="{split}.tsv to pack")
    p.add_argument("--out-dir", required=True, help="folder for the shards and the packed {split}.tsv")
    p.add_argument("--max-shard-bytes", type=float, default=DEFAULT_MAX_SHARD_BYTES,
                   help="size cap per shard in bytes (default 2 GiB; 1e9 style accepted)")
    p.add_argument("--prefix", help="shard and manifest name (default: the manifest's stem)")
    p.add_argument("--pcm", action="store_true",
                   help="store compressed files (FLAC, MP3, ...) decoded as WAV: 16-bit sources as 16-bit WAV "
                        "(lossless), others as float32 WAV (the samples the loader decodes); fastest to read, "
                        "larger on disk")
    p.add_argument("--pcm-subtype", choices=PCM_SUBTYPES, default="auto",
                   help="with --pcm: auto (as above); PCM_16 (every file as 16-bit: non-16-bit sources are "
                        "rounded) or FLOAT (every converted file as float32) imply --pcm")
    p.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = pack_manifest(args.manifest, args.out_dir, int(args.max_shard_bytes), args.prefix,
                            pcm=args.pcm, pcm_subtype=args.pcm_subtype, workers=args.workers)
    except (PackError, OSError, ValueError) as exc:
        print(f"ERROR: {exc}")
        return 1
    print(f"packed manifest: {out}")
    return 0
