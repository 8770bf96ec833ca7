"""The after-step spool: every event a process hands to an after-step (a usage record, an ingestion job) is appended
to a local file before the answer is written, then published to the broker from the background, with confirms.

What the broker has not confirmed stays in the file: a broker restart, an outage or a SIGKILL of the process loses
nothing. The spool is flushed on reconnect, at start-up (what a killed predecessor with the same name left) and at
shutdown; records may go out twice after a crash, and the consumers are idempotent on the request id. When the spool
is full (the broker away for long), `full` is true and callers refuse work that would go unrecorded.

On disk: a folder per process name (function and replica), segment files of length-prefixed msgpack records
{step, body, at}. A segment is deleted once every record in it is confirmed.
"""
from __future__ import annotations

import fcntl
import logging
import os
import random
import struct
import time
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Callable

import eventlet
import msgpack
from eventlet.event import Event

from .logs import log

_log = logging.getLogger("scaigrid.spool")
HEADER = struct.Struct(">I")
SEGMENT_BYTES = 4 * 2**20  # rotate at 4 MiB: a confirmed segment is one unlink
ROUND_RECORDS = 500  # records per delivery round at most
LINGER_S = 0.02  # the shortest time between two rounds (see Spool)


def broker_unreachable(exc: BaseException) -> bool:
    """A connection-level failure (retry the same record later), not a refusal of the record itself."""
    from amqp.exceptions import ConnectionError as AmqpConnectionError, RecoverableConnectionError
    from kombu.exceptions import OperationalError

    return isinstance(exc, (OSError, OperationalError, AmqpConnectionError, RecoverableConnectionError,
                            ConnectionError, TimeoutError))


class Segment:
    def __init__(self, path: Path, written: int = 0, size: int = 0):
        self.path, self.written, self.confirmed, self.size = path, written, 0, size


def read_segment(path: Path) -> list[dict]:
    """The records of one segment; a torn last record (a write cut short) is left out."""
    data, out, at = path.read_bytes(), [], 0
    while at + HEADER.size <= len(data):
        (length,) = HEADER.unpack_from(data, at)
        if at + HEADER.size + length > len(data):
            break
        try:
            out.append(msgpack.unpackb(data[at + HEADER.size:at + HEADER.size + length], raw=False))
        except ValueError:
            break
        at += HEADER.size + length
    return out


def _locked(folder: Path) -> Path:
    """The folder, held with an exclusive lock for this process's life (two live processes never share one
    spool: each would resend and delete the other's records). If another live process holds it, this one takes
    a folder of its own and says so."""
    for candidate in (folder, folder.with_name(f"{folder.name}.pid{os.getpid()}")):
        candidate.mkdir(parents=True, exist_ok=True)
        fd = os.open(candidate / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            log(_log, logging.WARNING, "spool folder held by another live process; using one of this process's",
                folder=str(folder))
            continue
        _held_locks.append(fd)  # released when the process ends, however it ends
        return candidate
    raise RuntimeError(f"cannot lock a spool folder under {folder.parent}")


_held_locks: list[int] = []


class Spool:
    """One per process. `append(step, body)` before answering; `start(publish)` to deliver in the background.

    Delivery goes in rounds: everything pending (up to ROUND_RECORDS) is handed to `publish` at once, which sends it
    and waits for the broker's confirms once. A quiet process sends each record as it comes; a busy one at most one
    round per `linger` seconds, so a few hundred requests a second cost a few dozen publishes and confirm waits, not
    one each (the one-by-one confirmed publishes were 18 % of a loaded gateway's CPU, py-spy). The answer never
    waits for this: the record is on disk before it is written.
    """

    def __init__(self, folder: Path, max_bytes: int, linger: float = LINGER_S):
        self.folder = _locked(folder)
        self.max_bytes = max_bytes
        self.linger = linger
        self._segments: deque[Segment] = deque()
        self._pending: deque[tuple[Segment, dict]] = deque()
        self._wake = Event()
        self._fd: int | None = None
        self._publisher = None
        self._down_since: float | None = None
        self._recover()

    # writing -------------------------------------------------------------------------------------------------
    @property
    def unconfirmed_bytes(self) -> int:
        return sum(s.size for s in self._segments if s.confirmed < s.written)

    @property
    def full(self) -> bool:
        """More unconfirmed than the cap: the broker has been away too long to take more on trust."""
        return self.unconfirmed_bytes >= self.max_bytes

    @property
    def pending(self) -> int:
        return len(self._pending)

    def append(self, step: str, body: dict) -> None:
        """Write the record to the file (one write: it survives a SIGKILL of this process from here on), then
        queue it for the broker."""
        record = {"step": step, "body": body, "at": time.time()}
        blob = msgpack.packb(record, use_bin_type=True, default=str)
        segment = self._current(len(blob))
        os.write(self._fd, HEADER.pack(len(blob)) + blob)
        segment.written += 1
        segment.size += HEADER.size + len(blob)
        self._pending.append((segment, record))
        if not self._wake.ready():
            self._wake.send(True)

    def _current(self, more: int) -> Segment:
        last = self._segments[-1] if self._segments else None
        if last is None or self._fd is None or last.size + more > SEGMENT_BYTES:
            if self._fd is not None:
                os.close(self._fd)
            path = self.folder / f"seg-{time.time_ns():020d}-{os.getpid()}.log"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            last = Segment(path)
            self._segments.append(last)
        return last

    def _recover(self) -> None:
        """What an earlier process of this name left unconfirmed goes out first."""
        for path in sorted(self.folder.glob("seg-*.log")):
            records = read_segment(path)
            segment = Segment(path, len(records), path.stat().st_size)
            self._segments.append(segment)
            self._pending.extend((segment, r) for r in records)
            if not records:
                self._forget_confirmed()
        if self._pending:
            log(_log, logging.WARNING, "after-step events left by an earlier process: publishing them",
                events=len(self._pending), folder=str(self.folder))

    def _confirm(self, segment: Segment) -> None:
        segment.confirmed += 1
        self._forget_confirmed()
        last = self._segments[-1] if self._segments else None
        if (not self._pending and self._fd is not None and len(self._segments) == 1
                and last.confirmed >= last.written):
            # all delivered: empty the open segment in place, so a crash resends nothing (closing, unlinking and
            # creating a file per quiet request was ~2 % of the gateway's CPU, py-spy)
            os.ftruncate(self._fd, 0)
            last.written = last.confirmed = last.size = 0

    def _forget_confirmed(self) -> None:
        while self._segments and self._segments[0].confirmed >= self._segments[0].written and (
                len(self._segments) > 1 or self._fd is None):
            done = self._segments.popleft()
            done.path.unlink(missing_ok=True)

    # delivering ----------------------------------------------------------------------------------------------
    def start(self, publish: Callable[[list[dict]], None]) -> None:
        """Deliver from a greenthread: `publish(records)` ({step, body, at} each, oldest first) must raise unless
        the broker confirmed every one of them."""
        if self._publisher is None:
            self._publisher = eventlet.spawn(self._deliver_forever, publish)

    def _deliver_forever(self, publish) -> None:
        backoff, singly, last_round = 0.2, 0, 0.0
        while True:
            if not self._pending:
                self._wake = Event()
                self._wake.wait()
                continue
            wait = self.linger - (time.monotonic() - last_round)
            if wait > 0 and not singly:  # under load a round at most every `linger` s: what came meanwhile
                eventlet.sleep(wait)  # goes out in it, in a few messages and one wait for confirms
            else:
                # woken by the request that spooled the record: its answer (woken after this) goes out first
                eventlet.sleep(0)
            last_round = time.monotonic()
            size = 1 if singly else min(len(self._pending), ROUND_RECORDS)
            batch = list(islice(self._pending, size))
            try:
                publish([record for _, record in batch])
            except Exception as exc:
                if not broker_unreachable(exc):  # a record is refused as such: find it, set it aside, go on
                    if size > 1:
                        singly = size
                        continue
                    self._reject(batch[0][1], exc)
                    self._done(1)
                    singly = max(0, singly - 1)
                    continue
                # broker away: keep them, say so once, retry with backoff
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log(_log, logging.WARNING, "broker unreachable: after-step events kept in the spool",
                        error=str(exc)[:200], folder=str(self.folder))
                eventlet.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)
                continue
            self._done(size)
            singly = max(0, singly - size)
            if self._down_since is not None:
                log(_log, logging.WARNING, "broker back: spooled after-step events delivered",
                    waited_s=round(time.monotonic() - self._down_since, 1), still_pending=len(self._pending))
                self._down_since = None
            backoff = 0.2

    def _done(self, count: int) -> None:
        for _ in range(count):
            segment, _ = self._pending.popleft()
            self._confirm(segment)

    def _reject(self, record: dict, exc: BaseException) -> None:
        """A record the broker will never take (it cannot be encoded, or is refused as such) goes to
        `rejected.log` beside the segments, for the operator, with one error line; the ones behind it go on."""
        blob = msgpack.packb({**record, "error": str(exc)[:1000]}, use_bin_type=True, default=str)
        with open(self.folder / "rejected.log", "ab") as out:
            out.write(HEADER.pack(len(blob)) + blob)
        log(_log, logging.ERROR, "after-step event refused by the broker; kept in rejected.log",
            step=record.get("step"), request_id=(record.get("body") or {}).get("id"), error=str(exc)[:300],
            folder=str(self.folder))

    def drain(self, timeout: float) -> bool:
        """At shutdown: wait (up to `timeout` s) until everything is confirmed; what is not stays on disk."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            eventlet.sleep(0.05)
        return not self._pending

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.kill()
            self._publisher = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._forget_confirmed()


_spools: dict[Path, Spool] = {}


def process_spool(folder: Path, max_bytes: int) -> Spool:
    """The one spool of this folder in this process (a gateway and the inline functions it hosts share it)."""
    spool = _spools.get(folder)
    if spool is None:
        spool = _spools[folder] = Spool(folder, max_bytes)
    return spool
