"""The ``.edgerec`` recording format: camera traffic captured exactly as received, for replay.

``edge record`` subscribes to cameras and writes every message it receives, malformed ones
included, with all of its parts untouched; ``edge replay`` publishes them again. A recording is
therefore a faithful test fixture for the daemon: the bytes it replays are the bytes it saw.

File layout, version 1
----------------------
All integers inside msgpack objects use whatever msgpack integer encoding fits; strings are
msgpack ``str`` (UTF-8); binary parts are msgpack ``bin`` (bin 8/16/32).

1. Magic: the 8 ASCII bytes ``EDGEREC1`` at offset 0.
2. From offset 8, a plain concatenation of msgpack objects, with no framing, length prefix,
   padding, index or trailer between or after them:

   a. Exactly one file header, a map with string keys::

          {"format": "edgerec", "v": 1, "created_ns": <int>, "source": <str>}

      ``format`` must be ``"edgerec"`` and ``v`` must be ``1``; a reader rejects any other
      version. ``created_ns`` is when the recording was opened, in nanoseconds since the Unix
      epoch (UTC) on the recording host. ``source`` is a free-form, human-readable description
      of where the messages came from (the recorder writes ``"connect <endpoint> ..."`` or
      ``"bind <endpoint> ..."``). Readers must ignore keys they do not know.

   b. Zero or more records, one per received ZeroMQ multipart message, in the order received.
      Each record is an array whose first two elements are::

          [recv_ts_ns: int, parts: [bin, bin, ...]]

      ``recv_ts_ns`` is when the recorder received the message, in nanoseconds since the Unix
      epoch on the recording host (wall clock, so it may step backwards if the host clock is
      adjusted). ``parts`` holds the message's frames in order, each byte-exact and possibly
      empty; a reader accepts an empty list, though the recorder never writes one. Readers
      must ignore array elements after the second, so that a later writer can append fields
      without a version bump.

3. End of file is end of records. A recorder that is killed leaves every record it finished
   intact and at most one incomplete record at the end (the writer flushes after each record);
   a reader reports that as truncation, naming the number of complete records and the byte
   offset at which the incomplete one starts.

What ``record`` captures: its SUB socket subscribes to every topic, as the daemon's does, so a
recording holds every message the daemon would have received, valid or not.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final

import msgpack
import structlog
import zmq

MAGIC: Final = b"EDGEREC1"
FORMAT: Final = "edgerec"
VERSION: Final = 1
SUFFIX: Final = ".edgerec"
# Short enough that a stop request is honoured promptly, long enough not to spin.
_POLL_MS: Final = 100
# msgpack's default 100 MiB cap is smaller than the largest frame the protocol allows (64 Mpx
# x 3 channels); 0 lifts it to 4 GiB. Memory still only grows with the bytes really in the file.
_MAX_BUFFER: Final = 0

log = structlog.get_logger(__name__)


class RecordingError(Exception):
    """A file that is not a readable recording; the message names the file and the problem."""


@dataclass(frozen=True)
class Record:
    recv_ts_ns: int
    parts: list[bytes]


class RecordingWriter:
    """Appends records to a new ``.edgerec`` file (an existing file at ``path`` is replaced).

    Every record is flushed to the OS as soon as it is written, so a recorder killed at any
    moment leaves a file whose complete records all read back. Nothing is fsynced: the data
    survives the process dying, not the host losing power.
    """

    def __init__(self, path: Path, source: str) -> None:
        self.path = Path(path)
        self.count = 0
        self._packer = msgpack.Packer(use_bin_type=True)
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        header = {"format": FORMAT, "v": VERSION, "created_ns": time.time_ns(), "source": source}
        self._file.write(MAGIC + self._packer.pack(header))
        self._file.flush()

    def write(self, parts: Sequence[bytes | memoryview], recv_ts_ns: int | None = None) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: recording is closed")
        ts = time.time_ns() if recv_ts_ns is None else recv_ts_ns
        # One write per record keeps the file a sequence of whole records plus at most one
        # partial tail, whatever moment the process dies at.
        self._file.write(self._packer.pack([ts, list(parts)]))
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_and_read_header(path: Path) -> tuple[BinaryIO, msgpack.Unpacker, dict[str, Any]]:
    """Open ``path``, check magic and header; return the file, an unpacker at record 0, header."""
    try:
        fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
    except OSError as exc:
        raise RecordingError(f"{path}: cannot open recording: {exc.strerror or exc}") from exc
    try:
        magic = fh.read(len(MAGIC))
        if magic != MAGIC:
            raise RecordingError(
                f"{path}: not an edge recording (expected magic {MAGIC!r} at offset 0, "
                f"found {magic!r})"
            )
        unpacker = msgpack.Unpacker(
            fh, raw=False, strict_map_key=False, max_buffer_size=_MAX_BUFFER
        )
        try:
            header = unpacker.unpack()
        except msgpack.OutOfData as exc:
            raise RecordingError(
                f"{path}: truncated in the file header (at byte offset {len(MAGIC)})"
            ) from exc
        except Exception as exc:  # msgpack raises several unrelated types for garbage
            raise RecordingError(f"{path}: file header is not valid msgpack: {exc}") from exc
        _check_header(path, header)
    except BaseException:
        fh.close()
        raise
    return fh, unpacker, header


def _check_header(path: Path, header: Any) -> None:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordingError(
            f"{path}: not an edge recording (file header is not a map with format={FORMAT!r})"
        )
    version = header.get("v")
    if version != VERSION:
        raise RecordingError(
            f"{path}: unsupported recording version v={version!r}; this reader supports v={VERSION}"
        )


def read_info(path: Path) -> dict[str, Any]:
    """The file header map of the recording at ``path`` (records are not read)."""
    fh, _, header = _open_and_read_header(Path(path))
    fh.close()
    return header


def count_records(path: Path) -> int:
    """How many whole records ``path`` holds, up to the first bad or partial one (a quick pass
    that decodes no record; for progress, so it never raises for what ``read_recording`` would
    report on its own)."""
    fh, unpacker, _ = _open_and_read_header(Path(path))
    with fh:
        count = 0
        while True:
            try:
                unpacker.skip()
            except Exception:  # OutOfData at the end; msgpack raises several types for garbage
                return count
            count += 1


def read_recording(path: Path, *, allow_truncated: bool = False) -> Iterator[Record]:
    """Yield the records of ``path`` in order, streaming (one record in memory at a time).

    A partial final record (a recorder killed mid-write) raises RecordingError after every
    complete record has been yielded, unless ``allow_truncated``, in which case iteration just
    stops there. Corruption anywhere else always raises.
    """
    path = Path(path)
    fh, unpacker, _ = _open_and_read_header(path)
    with fh:
        index = 0
        while True:
            offset = len(MAGIC) + unpacker.tell()
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                # The unpacker has consumed all it read; anything left in its buffer is a
                # record the writer never finished.
                if fh.tell() > offset and not allow_truncated:
                    raise RecordingError(
                        f"{path}: truncated after record {index} at byte offset {offset} "
                        f"({fh.tell() - offset} bytes of an incomplete record follow)"
                    ) from None
                return
            except Exception as exc:  # msgpack raises several unrelated types for garbage
                raise RecordingError(
                    f"{path}: record {index} at byte offset {offset} is not valid msgpack: {exc}"
                ) from exc
            yield _to_record(path, index, offset, obj)
            index += 1


def _to_record(path: Path, index: int, offset: int, obj: Any) -> Record:
    def bad(why: str) -> RecordingError:
        return RecordingError(f"{path}: record {index} at byte offset {offset} is malformed: {why}")

    if not isinstance(obj, list):
        raise bad(f"expected an array [recv_ts_ns, parts], got {type(obj).__name__}")
    if len(obj) < 2:
        raise bad(f"expected an array [recv_ts_ns, parts], got {len(obj)} element(s)")
    ts, parts = obj[0], obj[1]
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise bad(f"recv_ts_ns must be an integer, got {ts!r}")
    if not isinstance(parts, list) or not all(isinstance(p, bytes) for p in parts):
        raise bad("parts must be an array of bin")
    return Record(ts, parts)


def record(
    sources: Sequence[str],
    out: Path,
    *,
    frames: int | None = None,
    duration_s: float | None = None,
    bind: bool = False,
    stop: threading.Event | None = None,
    on_record: Callable[[int], None] | None = None,
) -> int:
    """Record camera traffic from ``sources`` into ``out``; return the number of records.

    A SUB socket subscribed to every topic connects to every source (or binds to each when
    ``bind``) and every message it receives is written as is. Recording stops once ``frames``
    records are written, ``duration_s`` has elapsed, or ``stop`` is set, whichever is first;
    with none of them it runs until interrupted. ``on_record`` is called with the running count
    after each record.
    """
    if not sources:
        raise ValueError("record needs at least one source endpoint")
    mode = "bind" if bind else "connect"
    deadline = None if duration_s is None else time.monotonic() + duration_s
    # The file first: an unwritable path fails before any socket exists, and once a camera
    # sees the subscription the recording is already readable.
    with RecordingWriter(out, f"{mode} {' '.join(sources)}") as writer:
        sock = zmq.Context.instance().socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            # Everything, as the daemon subscribes: a message with a broken topic is recorded
            # too, so a replay reproduces its reject.
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            for endpoint in sources:
                if bind:
                    sock.bind(endpoint)
                else:
                    sock.connect(endpoint)
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            while frames is None or writer.count < frames:
                if stop is not None and stop.is_set():
                    break
                timeout_ms = _POLL_MS
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    timeout_ms = min(timeout_ms, max(1, int(left * 1000)))
                if not poller.poll(timeout_ms):
                    continue
                parts = sock.recv_multipart()
                writer.write(parts, time.time_ns())
                if on_record is not None:
                    on_record(writer.count)
        finally:
            sock.close(linger=0)
        # Debug only: the CLI prints the one summary a user reads (and a script can parse).
        log.debug("recording finished", messages=writer.count, path=os.fspath(out))
        return writer.count
