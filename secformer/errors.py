"""Exceptions: every failure a user can meet has its own type and a message naming the cause."""


class SecformerError(Exception):
    """Base class of all secformer errors."""


class ConfigError(SecformerError):
    """The cluster configuration or a command-line argument is wrong."""


class FixedPointRangeError(SecformerError, ValueError):
    """A value is outside the range the fixed-point encoding can represent safely."""


class FrameError(SecformerError):
    """A frame on the wire is malformed, oversized, or from the wrong session or party."""


class PeerError(SecformerError):
    """A peer disconnected, timed out, aborted, or sent something inconsistent."""


class ProtocolError(SecformerError):
    """Inputs to a protocol are inconsistent (shape mismatch, wrong owner, ...)."""


class OutOfRangeError(SecformerError):
    """A value left the range a protocol is correct on: the result would be wrong, so the run stops."""
