"""Stamping the line's ``meta`` convention (coil, position, side, file) onto a source's frames.

``edge camera`` and ``edge replay`` stand in for a camera whose line controller would know
the coil and where on it each strip was taken; a ``MetaStamp`` gives every strip of a
camera the same base keys and a position that advances by the strip length per strip
(``edge.protocol.linemeta`` is the convention and docs/integration.md its reference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.protocol import pack, unpack
from edge.protocol.linemeta import strip_meta


@dataclass
class MetaStamp:
    """Base meta plus a per-camera strip position; one instance per stream of strips."""

    base: Mapping[str, Any] = field(default_factory=dict)
    strip_length_mm: float | None = None
    start_mm: float = 0.0
    _strips: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.strip_length_mm is not None and not self.strip_length_mm > 0:
            raise ValueError(f"--strip-length-mm must be > 0, got {self.strip_length_mm:g}")
        if not self.start_mm >= 0:
            raise ValueError(f"--start-mm must be >= 0, got {self.start_mm:g}")

    @property
    def active(self) -> bool:
        """Whether stamping changes anything (no keys and no positions: frames pass as they are)."""
        return bool(self.base) or self.strip_length_mm is not None

    def next_meta(
        self, camera: str, recorded: Mapping[str, Any] | None = None, *, file: str | None = None
    ) -> dict[str, Any]:
        """The meta of ``camera``'s next strip: ``recorded`` meta overlaid with the stamp."""
        index = self._strips.get(camera, 0)
        self._strips[camera] = index + 1
        base = {**(recorded or {}), **self.base}
        return strip_meta(
            base, index, strip_length_mm=self.strip_length_mm, start_mm=self.start_mm, file=file
        )


def stamp_frame_parts(
    parts: Sequence[bytes | memoryview], stamp: MetaStamp
) -> Sequence[bytes | memoryview]:
    """A recorded frame message with its header's meta stamped; anything else unchanged.

    A replay must keep a recorded bad message bad (the daemon's reject of it is what a test
    checks), so a message that is not a 3-part frame with a readable header map and a map
    for ``meta`` goes out exactly as recorded, unstamped and uncounted.
    """
    if not stamp.active or len(parts) != 3 or not bytes(parts[0]).startswith(b"frame/"):
        return parts
    try:
        header = unpack(parts[1])
    except Exception:  # any undecodable header: not ours to judge, the daemon rejects it
        return parts
    if not isinstance(header, dict):
        return parts
    camera, recorded = header.get("camera"), header.get("meta", {})
    if not isinstance(camera, str) or not isinstance(recorded, dict):
        return parts
    header["meta"] = stamp.next_meta(camera, recorded)
    return [parts[0], pack(header), parts[2]]
