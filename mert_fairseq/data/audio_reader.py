"""Windowed audio reads from plain files or packed shards, through soundfile's seek.

A manifest path is either a file (`song.flac`) or a packed member in fairseq's stored-zip convention,
`shard.zip:BYTE_OFFSET:BYTE_LENGTH`: the byte range of one complete audio file (WAV, FLAC, ...) stored
uncompressed inside a ZIP shard (`scripts/pack_audio.py`). Packed members are read in place through a
file-like view of that byte range, so a window read touches only the header and the window's bytes.

    wav, sr = read_window("/data/train_00000.zip:1234:5678", start=24000, frames=120000)  # mono float32
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from typing import IO, Optional

import numpy as np
import soundfile as sf

from mert_fairseq.audio import AudioError

_PACKED = re.compile(r"^(?P<shard>.+\.zip):(?P<offset>\d+):(?P<length>\d+)$")


@dataclass(frozen=True)
class PackedMember:
    shard: str
    offset: int
    length: int


def parse_packed(path: str | os.PathLike) -> Optional[PackedMember]:
    """`shard.zip:offset:length` -> PackedMember; a plain path -> None."""
    m = _PACKED.match(str(path))
    return PackedMember(m["shard"], int(m["offset"]), int(m["length"])) if m else None


class ByteRangeFile(io.RawIOBase):
    """Read-only, seekable view of bytes [offset, offset + length) of an open binary file."""

    def __init__(self, f: IO[bytes], offset: int, length: int) -> None:
        super().__init__()
        self.f, self.offset, self.length, self.pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = min(max(base + pos, 0), self.length)
        return self.pos

    def read(self, size: int = -1) -> bytes:
        size = self.length - self.pos if size is None or size < 0 else min(size, self.length - self.pos)
        self.f.seek(self.offset + self.pos)
        data = self.f.read(size)
        self.pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def open_sound(path: str | os.PathLike) -> tuple[sf.SoundFile, IO[bytes] | None]:
    """Open a plain or packed path -> (SoundFile, underlying shard file or None); close both after use.
    Errors are `AudioError`s naming the path (the shard and byte range for packed members)."""
    member = parse_packed(path)
    if member is None:
        try:
            return sf.SoundFile(str(path)), None
        except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
            raise AudioError(f"{path}: cannot read audio ({exc})") from exc
    try:
        f = open(member.shard, "rb")
    except OSError as exc:
        raise AudioError(f"{member.shard}: cannot open shard ({exc.strerror or exc})") from exc
    try:
        size = os.fstat(f.fileno()).st_size
        if member.offset + member.length > size:
            raise AudioError(f"{path}: truncated shard {member.shard}: the member needs bytes "
                             f"{member.offset}..{member.offset + member.length} but the shard has {size} bytes")
        try:
            return sf.SoundFile(ByteRangeFile(f, member.offset, member.length)), f
        except Exception as exc:
            raise AudioError(f"{path}: corrupt member in shard {member.shard}: cannot read audio ({exc})") from exc
    except BaseException:
        f.close()
        raise


def read_window(path: str | os.PathLike, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """Frames [start, start + frames) of a file (all from `start` when frames < 0) -> (mono float32, rate).

    Multi-channel audio is averaged to mono. Raises AudioError for unreadable, empty or non-finite audio."""
    snd, shard = open_sound(path)
    try:
        with snd:
            if start:
                snd.seek(start)
            wav = snd.read(frames, dtype="float32", always_2d=True)
            sr = snd.samplerate
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: cannot read audio frames {start}..{start + frames} ({exc})") from exc
    finally:
        if shard is not None:
            shard.close()
    if wav.shape[0] == 0:
        raise AudioError(f"{path}: no audio at frames {start}.. (file has fewer samples)" if start
                         else f"{path}: audio file is empty (0 samples)")
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return (wav[:, 0] if wav.shape[1] == 1 else wav.mean(axis=1)), int(sr)


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """(frames, sample rate, channels) from the header of a plain or packed file; AudioError if unreadable."""
    snd, shard = open_sound(path)
    try:
        with snd:
            return snd.frames, snd.samplerate, snd.channels
    finally:
        if shard is not None:
            shard.close()
