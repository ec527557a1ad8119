"""Frames on the wire.

    frame   = length:uint32 big-endian | body (msgpack map, at most max_frame bytes)
    body    = {"v": version, "s": session, "p": sender, "t": type, ...}
    type    = "hello" (handshake, "h": info) | "data" ("m": [message, ...])
            | "abort" ("e": reason) | "bye"
    message = [key:str, [[dtype:str, shape:[int...], raw:bytes], ...], meta?]

Arrays travel as raw little-endian bytes (no per-element encoding). Every frame is checked
here: a malformed body, an unknown type, a dtype outside :data:`DTYPES`, or a shape that does
not match its bytes raises :class:`FrameError` naming the problem.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from secformer.errors import FrameError

VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 1 << 30  # 1 GiB; configurable per cluster
DTYPES: dict[str, np.dtype] = {
    "u8": np.dtype("<u1"),
    "u64": np.dtype("<u8"),
    "i64": np.dtype("<i8"),
    "f64": np.dtype("<f8"),
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FRAME_TYPES = ("hello", "data", "abort", "bye")
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


def encode_array(a: np.ndarray) -> list[Any]:
    a = np.ascontiguousarray(a)
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    name = _DTYPE_NAMES.get(np.dtype(dt))
    if name is None:
        raise FrameError(f"cannot send dtype {a.dtype}; allowed: {sorted(DTYPES)}")
    return [name, list(a.shape), a.astype(dt, copy=False).tobytes()]


def decode_array(item: Any) -> np.ndarray:
    if not (isinstance(item, list | tuple) and len(item) == 3):
        raise FrameError("array entry must be [dtype, shape, bytes]")
    name, shape, raw = item
    dt = DTYPES.get(name) if isinstance(name, str) else None
    if dt is None:
        raise FrameError(f"unknown dtype {name!r}")
    if (
        not isinstance(shape, list | tuple)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise FrameError(f"bad shape {shape!r}")
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise FrameError("array payload is not bytes")
    n = 1
    for d in shape:
        n *= d
    if n * dt.itemsize != len(raw):
        raise FrameError(f"array payload has {len(raw)} bytes, shape {tuple(shape)} of {name} needs {n * dt.itemsize}")
    return np.frombuffer(raw, dtype=dt).reshape(shape)


def encode_frame(
    type_: str,
    session: str,
    sender: int,
    messages: list[tuple[str, list[np.ndarray], Any]] | None = None,
    info: dict[str, Any] | None = None,
    reason: str = "",
    max_frame: int = DEFAULT_MAX_FRAME,
) -> bytes:
    """Serialise one frame including its length prefix."""
    body: dict[str, Any] = {"v": VERSION, "s": session, "p": sender, "t": type_}
    if messages is not None:
        body["m"] = [
            [k, [encode_array(a) for a in arrays]] + ([] if meta is None else [meta]) for k, arrays, meta in messages
        ]
    if info is not None:
        body["h"] = info
    if reason:
        body["e"] = reason
    payload = msgpack.packb(body, use_bin_type=True)
    if len(payload) > max_frame:
        raise FrameError(
            f"frame of {len(payload)} bytes exceeds max_frame={max_frame}; raise max_frame in the cluster config"
        )
    return HEADER.pack(len(payload)) + payload


def decode_body(payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Parse and validate a frame body (without its length prefix)."""
    try:
        body = msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_frame,
            max_str_len=1 << 20,
            max_array_len=1 << 20,
            max_map_len=1 << 10,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise FrameError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(body, dict):
        raise FrameError("frame body is not a map")
    if body.get("v") != VERSION:
        raise FrameError(f"unsupported wire version {body.get('v')!r} (expected {VERSION})")
    type_, session, sender = body.get("t"), body.get("s"), body.get("p")
    if type_ not in FRAME_TYPES:
        raise FrameError(f"unknown frame type {type_!r}")
    if not isinstance(session, str):
        raise FrameError("frame has no session id")
    if not isinstance(sender, int) or isinstance(sender, bool) or sender not in (0, 1, 2):
        raise FrameError(f"bad sender {sender!r}")
    frame = Frame(type=type_, session=session, sender=sender)
    if type_ == "data":
        msgs = body.get("m")
        if not isinstance(msgs, list):
            raise FrameError("data frame without message list")
        for m in msgs:
            if not (isinstance(m, list) and len(m) in (2, 3) and isinstance(m[0], str)):
                raise FrameError("message must be [key, arrays] or [key, arrays, meta]")
            if not isinstance(m[1], list):
                raise FrameError("message arrays must be a list")
            meta = m[2] if len(m) == 3 else None
            frame.messages.append((m[0], [decode_array(a) for a in m[1]], meta))
    elif type_ == "hello":
        info = body.get("h")
        if not isinstance(info, dict):
            raise FrameError("hello frame without info map")
        frame.info = info
    elif type_ == "abort":
        reason = body.get("e", "")
        frame.reason = reason if isinstance(reason, str) else repr(reason)
    return frame
