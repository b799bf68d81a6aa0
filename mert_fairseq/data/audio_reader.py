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
import struct
from dataclasses import dataclass
from typing import IO, Optional

import numpy as np
import soundfile as sf

from mert_fairseq.data.audio import AudioError

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


def read_window(path: str | os.PathLike, start: int = 0, frames: int = -1,
                expected_rate: Optional[int] = None, expected_frames: Optional[int] = None) -> tuple[np.ndarray, int]:
    """Frames [start, start + frames) of a file (all from `start` when frames < 0) -> (mono float32, rate).

    Multi-channel audio is averaged to mono. 16-bit PCM is read as int16 and scaled by 2^-15 in numpy,
    which gives exactly libsndfile's float32 values; plain 16-bit and 32-bit float WAV (what
    prepare_manifest.py and `pack_audio.py --pcm` write) are read with two preads, without soundfile's
    per-call overhead. Raises AudioError for
    unreadable, empty or non-finite audio, when the rate differs from `expected_rate` and when the
    file's length differs from `expected_frames` (the manifest's)."""
    fast = _read_wav(path, start, frames)
    if fast is not None:
        pcm, channels, sr, total = fast
    else:
        pcm, channels, sr, total = _read_soundfile(path, start, frames)
    if total == 0:
        raise AudioError(f"{path}: audio file is empty (0 samples)")
    if expected_rate is not None and sr != expected_rate:
        raise AudioError(f"{path}: sample rate {sr} Hz, the task expects {expected_rate} Hz "
                         "(convert with scripts/prepare_manifest.py)")
    if expected_frames is not None and total != expected_frames:
        raise AudioError(f"{path}: {total} samples but the manifest says {expected_frames} "
                         "(file changed after the manifest was written?)")
    if pcm.shape[0] == 0:
        raise AudioError(f"{path}: no audio at frames {start}.. (file has {total} samples)")
    if pcm.dtype == np.int16:
        mono = pcm[:, 0] if channels == 1 else pcm.mean(axis=1, dtype=np.float32)
        return np.multiply(mono, np.float32(1 / 32768), dtype=np.float32), sr
    if not np.isfinite(pcm).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return (np.ascontiguousarray(pcm[:, 0]) if channels == 1 else pcm.mean(axis=1)), sr


def _read_soundfile(path: str | os.PathLike, start: int, frames: int) -> tuple[np.ndarray, int, int, int]:
    """-> (int16 or float32 array [frames, channels], channels, rate, total frames) through soundfile
    (any format)."""
    snd, shard = open_sound(path)
    try:
        with snd:
            if start:
                snd.seek(start)
            dtype = "int16" if snd.subtype == "PCM_16" else "float32"
            pcm = snd.read(frames, dtype=dtype, always_2d=True)
            return pcm, snd.channels, int(snd.samplerate), int(snd.frames)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: cannot read audio frames {start}..{start + frames} ({exc})") from exc
    finally:
        if shard is not None:
            shard.close()


WAV_SUBTYPES = {"PCM_16": (1, "<i2"), "FLOAT": (3, "<f4")}  # the WAV samples read here: (format tag, dtype)
_WAV_DTYPES = {(tag, 8 * np.dtype(dtype).itemsize): dtype for tag, dtype in WAV_SUBTYPES.values()}  # (tag, bits)


def wav_layout(head: bytes) -> Optional[tuple[int, int, int, int, str]]:
    """(data offset, data bytes, channels, rate, sample dtype) of a 16-bit PCM or 32-bit float RIFF/WAVE
    header, else None."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(head):
        chunk, size = head[pos: pos + 4], int.from_bytes(head[pos + 4: pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            if size < 16 or body + size > len(head):
                return None
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", head, body)
            if tag == 0xFFFE and size >= 40:  # WAVE_FORMAT_EXTENSIBLE: the subformat GUID starts with the tag
                tag = struct.unpack_from("<H", head, body + 24)[0]
            fmt = (tag, channels, rate, bits)
        elif chunk == b"data":
            dtype = _WAV_DTYPES.get((fmt[0], fmt[3])) if fmt is not None else None
            if dtype is None or fmt[1] < 1:
                return None
            return body, size, fmt[1], fmt[2], dtype
        pos = body + size + (size & 1)
    return None


def _read_wav(path: str | os.PathLike, start: int, frames: int) -> Optional[tuple[np.ndarray, int, int, int]]:
    """The soundfile-free path for 16-bit PCM and 32-bit float WAV (plain or packed); None when it does
    not apply (other formats, unusual headers, missing or truncated files: soundfile then reads or
    reports them)."""
    member = parse_packed(path)
    file, base = (member.shard, member.offset) if member else (str(path), 0)
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        limit = member.length if member else size
        if base + limit > size:
            return None
        layout = wav_layout(os.pread(fd, min(4096, limit), base))
        if layout is None or layout[0] + layout[1] > limit:
            return None
        data, nbytes, channels, rate, dtype = layout
        frame_bytes = np.dtype(dtype).itemsize * channels
        total = nbytes // frame_bytes
        start = min(max(start, 0), total)
        count = total - start if frames < 0 else min(frames, total - start)
        raw = os.pread(fd, count * frame_bytes, base + data + start * frame_bytes)
    finally:
        os.close(fd)
    return np.frombuffer(raw, dtype=dtype).reshape(-1, channels), channels, rate, total


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """(frames, sample rate, channels) from the header of a plain or packed file; AudioError if unreadable."""
    snd, shard = open_sound(path)
    try:
        with snd:
            return snd.frames, snd.samplerate, snd.channels
    finally:
        if shard is not None:
            shard.close()
