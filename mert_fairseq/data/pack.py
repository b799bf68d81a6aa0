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

Resumable: shards are written to a temporary file and renamed when complete, so a kill leaves whole
shards only; a rerun keeps every shard whose members match the plan and writes the rest. The plan
(which file goes to which shard) depends only on the manifest and the file sizes.
"""
from __future__ import annotations

import logging
import os
import shutil
import struct
import zipfile
from pathlib import Path

from mert_fairseq.data.audio_reader import parse_packed
from mert_fairseq.data.manifest_index import read_manifest_index
from mert_fairseq.fileio import atomic_open

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_BYTES = 2 << 30  # 2 GiB
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same input gives the same shard bytes
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # ZIP local file header, 30 bytes


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


def _write_shard(path: Path, members: list[tuple[str, Path]]) -> None:
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, src in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = src.stat().st_size
            with open(src, "rb") as fin, zf.open(info, "w", force_zip64=info.file_size > 0x7FFF0000) as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)


def _reusable(path: Path, members: list[tuple[str, Path]], sizes: list[int]) -> dict | None:
    """Member ranges of an existing shard if it holds exactly the planned members, else None."""
    if not path.is_file():
        return None
    try:
        ranges = member_ranges(path)
    except (zipfile.BadZipFile, OSError, PackError) as exc:
        logger.warning("%s: unreadable shard, rewriting it (%s)", path, exc)
        return None
    planned = {name: size for (name, _), size in zip(members, sizes)}
    if list(ranges) != list(planned) or any(ranges[n][1] != s for n, s in planned.items()):
        logger.warning("%s: holds other files than planned (input changed?), rewriting it", path)
        return None
    return ranges


def pack_manifest(manifest: str | os.PathLike, out_dir: str | os.PathLike,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, prefix: str | None = None) -> Path:
    """Pack the audio of `manifest` into shards under `out_dir`; returns the packed manifest path
    (`out_dir/{prefix}.tsv`, prefix defaulting to the manifest's stem, e.g. train)."""
    manifest, out_dir = Path(manifest), Path(out_dir)
    prefix = prefix or manifest.stem
    index = read_manifest_index(manifest)
    root = Path(index.root)
    names = [index.name(r) for r in range(len(index))]
    unique = list(dict.fromkeys(names))  # first appearance order
    sources, sizes = [], []
    for name in unique:
        if parse_packed(name):
            raise PackError(f"{manifest}:{names.index(name) + 2}: {name} is already packed")
        src = root / name
        try:
            sizes.append(src.stat().st_size)
        except OSError as exc:
            raise PackError(f"{manifest}:{names.index(name) + 2}: {src}: {exc.strerror or exc}") from exc
        sources.append(src)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f".{prefix}_*.zip.*.tmp"):  # left by a killed run
        stale.unlink()
    location: dict[str, str] = {}
    plan = plan_shards(unique, sizes, max_shard_bytes)
    for k, members in enumerate(plan):
        shard = out_dir / f"{prefix}_{k:05d}.zip"
        listed = [(unique[i], sources[i]) for i in members]
        ranges = _reusable(shard, listed, [sizes[i] for i in members])
        if ranges is None:
            logger.info("writing %s (%d files, %.1f MB)", shard, len(members), sum(sizes[i] for i in members) / 1e6)
            _write_shard(shard, listed)
            ranges = member_ranges(shard)
        else:
            logger.info("keeping %s (already complete)", shard)
        for name, (offset, length) in ranges.items():
            location[name] = f"{shard.name}:{offset}:{length}"
    packed = out_dir / f"{prefix}.tsv"
    with atomic_open(packed, "w") as f:
        f.write(f"{out_dir.resolve()}\n")
        for r, name in enumerate(names):
            f.write(f"{location[name]}\t{int(index.sizes[r])}\n")
    logger.info("%s: %d rows in %d shard(s)", packed, len(names), len(plan))
    return packed


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Pack a manifest's audio into uncompressed ZIP shards and write a "
                                            "manifest of shard.zip:offset:length rows (labels stay valid).")
    p.add_argument("manifest", help="{split}.tsv to pack")
    p.add_argument("--out-dir", required=True, help="folder for the shards and the packed {split}.tsv")
    p.add_argument("--max-shard-bytes", type=float, default=DEFAULT_MAX_SHARD_BYTES,
                   help="size cap per shard in bytes (default 2 GiB; 1e9 style accepted)")
    p.add_argument("--prefix", help="shard and manifest name (default: the manifest's stem)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = pack_manifest(args.manifest, args.out_dir, int(args.max_shard_bytes), args.prefix)
    except (PackError, OSError, ValueError) as exc:
        print(f"ERROR: {exc}")
        return 1
    print(f"packed manifest: {out}")
    return 0
