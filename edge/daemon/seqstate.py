"""Each camera's last seq whose event left, kept on disk so a crash loses no frame silently.

Without it a restarted daemon takes each camera's first frame as a new baseline, and the frames
that were queued when it died, or sent while it was down, vanish without an event. With it the
first frame after a restart is compared with the seq kept here, and what fell between is
reported as a ``gap`` (flagged ``across_restart``).

The file is small (one entry per camera, at most ``max_cameras``) and written atomically
(a temporary file, fsync, rename) every ``state_interval_s`` and at shutdown, so a crash leaves
either the previous file or the new one, never half of one. After a crash the kept seqs can be
up to ``state_interval_s`` old: the gap then also spans frames whose events did leave, which a
subscriber matching events by (camera, seq) can tell. A missing file is a first start; a
corrupt one is logged and ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from build_engine.sidecar import atomic_write

log = structlog.get_logger(__name__)
FILE_NAME = "last_seqs.json"
FORMAT = "edge-last-seqs"
VERSION = 1


def state_file(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def load(path: Path, max_cameras: int) -> dict[str, int]:
    """The kept seqs, or {} (logged) when the file is missing, unreadable or not ours."""
    try:
        data = json.loads(path.read_bytes()[: 1 << 20])  # a state file is kilobytes
    except FileNotFoundError:
        log.info("no camera state yet: the first frame of each camera starts its count",
                 file=str(path))  # fmt: skip
        return {}
    except (OSError, ValueError) as err:
        log.warning("camera state unreadable, ignored: frames lost before this start cannot "
                    "be reported", file=str(path), error=str(err))  # fmt: skip
        return {}
    seqs = data.get("cameras") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or data.get("v") != VERSION
        or not isinstance(seqs, dict)
    ):
        log.warning("camera state is not an edge state file, ignored", file=str(path))
        return {}
    kept = {
        camera: seq
        for camera, seq in seqs.items()
        if isinstance(camera, str) and type(seq) is int and seq >= -1
    }
    if len(kept) != len(seqs) or len(kept) > max_cameras:
        log.warning("camera state has entries that are not a camera and a seq, or more cameras "
                    "than max_cameras; those are ignored", file=str(path))  # fmt: skip
    return dict(list(kept.items())[:max_cameras])


def save(path: Path, seqs: dict[str, int]) -> None:
    """Write ``seqs`` so that a crash at any moment leaves a whole file."""
    body = json.dumps({"format": FORMAT, "v": VERSION, "cameras": seqs}, sort_keys=True)
    atomic_write(path, body.encode())


class StateWriter:
    """Writes the ledger's settled seqs when they changed and the interval passed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: dict[str, int] | None = None
        self._failed = False

    def write(self, seqs: dict[str, int]) -> None:
        if seqs == self._written:
            return
        try:
            save(self.path, seqs)
        except OSError as err:
            if not self._failed:  # once per failure spell: the journal must not fill up
                log.error("cannot write camera state: a crash now would lose frames silently",
                          file=str(self.path), error=str(err))  # fmt: skip
            self._failed = True
            return
        if self._failed:
            log.info("camera state written again", file=str(self.path))
        self._failed = False
        self._written = dict(seqs)
