"""Frames on the wire.

    frame   = length:uint32 | meta_length:uint32 | meta (msgpack map) | payload   (big-endian)
    meta    = {"v": version, "s": session, "p": sender, "t": type, ...}
    type    = "hello" (handshake, "h": info) | "data" ("m": [message, ...])
            | "abort" ("e": reason) | "bye"
    message = [key:str, [[dtype:str, shape:[int...]], ...], meta?]

The arrays of all messages follow the meta as one payload of raw little-endian bytes, in order:
they are written without copying (``writelines`` of memoryviews) and read without copying
(``numpy.frombuffer`` on the received body). ``length`` counts everything after itself and is
at most ``max_frame``. Every frame is checked: a malformed meta, an unknown type, a dtype outside
:data:`DTYPES`, or shapes whose sizes do not add up to the payload raise :class:`FrameError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from secformer.errors import FrameError

VERSION = 4
HEADER = struct.Struct(">I")
META = struct.Struct(">I")
DEFAULT_MAX_FRAME = 1 << 30  # 1 GiB; configurable per cluster
DTYPES: dict[str, np.dtype] = {
    "u8": np.dtype("<u1"),
    "u16": np.dtype("<u2"),
    "u32": np.dtype("<u4"),
    "u64": np.dtype("<u8"),
    "i64": np.dtype("<i8"),
    "f64": np.dtype("<f8"),
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FRAME_TYPES = ("hello", "data", "abort", "bye", "busy")  # busy: alive, sending nothing (an offline phase)
MAX_DIMS = 8


@dataclass
class Frame:
    """A decoded frame."""

    type: str
    session: str
    sender: int
    messages: list[tuple[str, list[np.ndarray], Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _array_desc(a: np.ndarray) -> tuple[list[Any], memoryview]:
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    name = _DTYPE_NAMES.get(np.dtype(a.dtype))
    if name is None:
        raise FrameError(f"cannot send dtype {a.dtype}; allowed: {sorted(DTYPES)}")
    return [name, list(a.shape)], memoryview(a).cast("B") if a.size else memoryview(b"")


def encode_frame_parts(
    type_: str,
    session: str,
    sender: int,
    messages: list[tuple[str, list[np.ndarray], Any]] | None = None,
    info: dict[str, Any] | None = None,
    reason: str = "",
    max_frame: int = DEFAULT_MAX_FRAME,
) -> list[bytes | memoryview]:
    """One frame as a list of buffers (the arrays are not copied); ``b"".join`` gives the bytes."""
    meta: dict[str, Any] = {"v": VERSION, "s": session, "p": sender, "t": type_}
    payload: list[memoryview] = []
    if messages is not None:
        msgs = []
        for k, arrays, m in messages:
            descs = []
            for a in arrays:
                d, buf = _array_desc(a)
                descs.append(d)
                payload.append(buf)
            msgs.append([k, descs] + ([] if m is None else [m]))
        meta["m"] = msgs
    if info is not None:
        meta["h"] = info
    if reason:
        meta["e"] = reason
    packed = msgpack.packb(meta, use_bin_type=True)
    total = META.size + len(packed) + sum(b.nbytes for b in payload)
    if total > max_frame:
        raise FrameError(f"frame of {total} bytes exceeds max_frame={max_frame}; raise max_frame in the cluster config")
    return [HEADER.pack(total) + META.pack(len(packed)) + packed, *payload]


def encode_frame(*args: Any, **kw: Any) -> bytes:
    """One frame as bytes (tests, handshakes); see :func:`encode_frame_parts`."""
    return b"".join(encode_frame_parts(*args, **kw))


def decode_body(body: bytes | bytearray | memoryview, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Parse and validate a frame (without its length prefix). Arrays are views into ``body``."""
    view = memoryview(body)
    if len(view) < META.size:
        raise FrameError(f"frame of {len(view)} bytes is shorter than its meta header")
    (mlen,) = META.unpack(view[: META.size])
    if mlen > len(view) - META.size:
        raise FrameError(f"meta of {mlen} bytes announced in a frame of {len(view)} bytes")
    try:
        meta = msgpack.unpackb(
            view[META.size : META.size + mlen],
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=1 << 20,
            max_str_len=1 << 20,
            max_array_len=1 << 20,
            max_map_len=1 << 10,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise FrameError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict):
        raise FrameError("frame meta is not a map")
    if meta.get("v") != VERSION:
        raise FrameError(f"unsupported wire version {meta.get('v')!r} (expected {VERSION})")
    type_, session, sender = meta.get("t"), meta.get("s"), meta.get("p")
    if type_ not in FRAME_TYPES:
        raise FrameError(f"unknown frame type {type_!r}")
    if not isinstance(session, str):
        raise FrameError("frame has no session id")
    if not isinstance(sender, int) or isinstance(sender, bool) or sender not in (0, 1, 2):
        raise FrameError(f"bad sender {sender!r}")
    frame = Frame(type=type_, session=session, sender=sender)
    payload = view[META.size + mlen :]
    pos = 0
    if type_ == "data":
        msgs = meta.get("m")
        if not isinstance(msgs, list):
            raise FrameError("data frame without message list")
        for m in msgs:
            if not (isinstance(m, list) and len(m) in (2, 3) and isinstance(m[0], str)):
                raise FrameError("message must be [key, arrays] or [key, arrays, meta]")
            if not isinstance(m[1], list):
                raise FrameError("message arrays must be a list")
            arrays = []
            for d in m[1]:
                dt, shape, n = _check_desc(d)
                if pos + n > len(payload):
                    raise FrameError(f"array of {n} bytes runs past the payload ({len(payload)} bytes)")
                arrays.append(np.frombuffer(payload[pos : pos + n], dtype=dt).reshape(shape))
                pos += n
            frame.messages.append((m[0], arrays, m[2] if len(m) == 3 else None))
    elif type_ == "hello":
        info = meta.get("h")
        if not isinstance(info, dict):
            raise FrameError("hello frame without info map")
        frame.info = info
    elif type_ in ("abort", "bye"):  # a bye may say why the peer ends (e.g. a server's drain)
        reason = meta.get("e", "")
        frame.reason = reason if isinstance(reason, str) else repr(reason)
    if pos != len(payload):
        raise FrameError(f"payload has {len(payload)} bytes, the arrays account for {pos}")
    return frame


def _check_desc(d: Any) -> tuple[np.dtype, tuple[int, ...], int]:
    if not (isinstance(d, list | tuple) and len(d) == 2):
        raise FrameError("array entry must be [dtype, shape]")
    name, shape = d
    dt = DTYPES.get(name) if isinstance(name, str) else None
    if dt is None:
        raise FrameError(f"unknown dtype {name!r}")
    if (
        not isinstance(shape, list | tuple)
        or len(shape) > MAX_DIMS
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in shape)
    ):
        raise FrameError(f"bad shape {shape!r}")
    n = 1
    for x in shape:
        n *= x
    return dt, tuple(shape), n * dt.itemsize
