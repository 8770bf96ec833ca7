"""Run a blocking client in a separate, plain Python process, so that its calls never stall the eventlet hub.

Some clients block the whole hub (weaviate-client v4's gRPC calls; eventlet.tpool around them failed, docs/architecture.md):
no green I/O, no real thread of ours helps. `OffHubProcess("package.module:factory", args=(...))` starts
`python -m scaigrid.runtime.offhub_child`, which builds the object there and serves its methods; this side only
does pipe I/O, which is green under eventlet. Many greenlets (or threads) may call at once: every request carries
an id, the child runs up to `workers` calls in parallel and answers in any order, one reader here hands each reply
to its caller.

    store = OffHubProcess("scaigrid.adapters.vector.weaviate_client:WeaviateBackend", kwargs={...})
    hits = store.call("search_vector", tenant, collection, vector, k=8)

Errors come back as the same class when it is a builtin exception or one defined under `scaigrid.` (ValueError,
CollectionNotFound, ...), else as RuntimeError("module.Class: message"); the child's traceback is a note on it.
A child that dies (crash, kill, OOM) fails the calls in flight with one line saying so; the next call starts a new
one, at once after a first death, then backing off (0.5 s doubling to `max_backoff`) while it keeps dying.
The child exits when its stdin ends: on `close()`, or when this process dies. Knows nothing of AI.
"""
from __future__ import annotations

import importlib
import itertools
import logging
import signal
import sys
import time
from typing import Any

from .offhub_child import encode, read_frame

log = logging.getLogger(__name__)
CHILD_MODULE = "scaigrid.runtime.offhub_child"
ALLOWED_ERROR_MODULES = ("builtins", "scaigrid.")  # classes we re-raise as themselves; the rest is RuntimeError


class OffHubError(RuntimeError):
    """The off-hub process could not answer (see the subclasses)."""


class OffHubDied(OffHubError):
    """The child died while the call was in flight (the call may or may not have taken effect)."""


class OffHubTimeout(OffHubError, TimeoutError):
    """No answer within the call's timeout (the child may still finish the call; its answer is dropped)."""


class OffHubUnavailable(OffHubError):
    """Closed, or waiting out the restart back-off after repeated deaths."""


def eventlet_patched() -> bool:
    """True in a monkey-patched process (nameko workers): then pipes, locks and threads here must be green."""
    if "eventlet" not in sys.modules:
        return False
    from eventlet import patcher

    return patcher.is_monkey_patched("thread")


def _kit(green: bool):
    """(threading, subprocess) modules: eventlet's green ones, or the stdlib's for plain processes."""
    if green:
        from eventlet.green import subprocess, threading

        return threading, subprocess
    import subprocess
    import threading

    return threading, subprocess


class _Reply:
    __slots__ = ("event", "value", "error", "child")

    def __init__(self, event, child):
        self.event, self.value, self.error, self.child = event, None, None, child

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.event.set()


class _Child:
    def __init__(self, proc, ready: _Reply):
        self.proc, self.ready = proc, ready
        self.closing = False
        self.failure: str | None = None  # the factory's error, when it never got ready


class OffHubProcess:
    """A proxy to one object living in a child process. Thread- and greenlet-safe; see the module docstring."""

    def __init__(self, target: str, args: tuple | list = (), kwargs: dict | None = None, *, workers: int = 8,
                 timeout: float = 30.0, start_timeout: float = 60.0, max_backoff: float = 30.0,
                 green: bool | None = None, name: str | None = None, executable: str | None = None):
        """`target`: "package.module:factory", imported in the child (which gets this process's sys.path).
        `args`/`kwargs` go to the factory over the pipe (never argv or the environment: they may hold secrets) and
        must be msgpack-able. `timeout`: default per call; `green`: None = green when eventlet has patched us."""
        self.target, self.args, self.kwargs = target, list(args), dict(kwargs or {})
        self.workers, self.timeout, self.start_timeout, self.max_backoff = workers, timeout, start_timeout, max_backoff
        self.name = name or target
        self.executable = executable or sys.executable
        self.green = eventlet_patched() if green is None else green
        self._threading, self._subprocess = _kit(self.green)
        self._state = self._threading.Lock()  # _child, _pending, deaths
        self._start = self._threading.Lock()  # one start at a time; callers queue behind it
        self._write = self._threading.Lock()  # frames must not interleave on the pipe
        self._ids = itertools.count(1)
        self._pending: dict[int, _Reply] = {}
        self._child: _Child | None = None
        self._deaths = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._closed = False

    # public ------------------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The running child's pid (None before the first call or after a death)."""
        child = self._child
        return child.proc.pid if child else None

    def start(self) -> int:
        """Start the child now (the first call would); returns its pid. Raises the factory's error if it fails."""
        return self._ensure_child().proc.pid

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """`obj.method(*args, **kwargs)` in the child; `timeout` (seconds) overrides the default for this call."""
        child = self._ensure_child()
        frame = encode({"id": (call_id := next(self._ids)), "m": method, "a": list(args), "k": kwargs})
        reply = _Reply(self._threading.Event(), child)
        with self._state:
            self._pending[call_id] = reply
        try:
            self._send(child, frame)
            limit = self.timeout if timeout is None else timeout
            if not reply.event.wait(limit):
                raise OffHubTimeout(f"off-hub process {self.name}: {method} gave no answer within {limit:g} s")
        finally:
            with self._state:
                self._pending.pop(call_id, None)
        if reply.error is not None:
            raise reply.error
        with self._state:
            self._deaths = 0  # a child that answers is healthy again: the next death restarts at once
        return reply.value

    def close(self, grace: float = 5.0) -> None:
        """Stop the child: its stdin ends, it closes its object and exits; killed after `grace` seconds."""
        with self._start:
            self._closed = True
            with self._state:
                child, self._child = self._child, None
        if child is None:
            return
        child.closing = True
        try:
            child.proc.stdin.close()
        except OSError:
            pass
        try:
            child.proc.wait(timeout=grace)
        except self._subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
        self._fail_pending(child, OffHubUnavailable(f"off-hub process {self.name} was closed during the call"))

    def __enter__(self) -> OffHubProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # the child's life ------------------------------------------------------------------------------------------
    def _ensure_child(self) -> _Child:
        child = self._child
        if child is not None:
            return child
        with self._start:
            if self._closed:
                raise OffHubUnavailable(f"off-hub process {self.name} is closed")
            if self._child is not None:  # started by the caller we queued behind
                return self._child
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise OffHubUnavailable(f"off-hub process {self.name} is down ({self._last_error}); "
                                        f"next start in {wait:.1f} s")
            return self._spawn()

    def _spawn(self) -> _Child:
        proc = self._subprocess.Popen([self.executable, "-m", CHILD_MODULE], stdin=self._subprocess.PIPE,
                                      stdout=self._subprocess.PIPE, bufsize=0, close_fds=True)
        child = _Child(proc, _Reply(self._threading.Event(), None))
        self._threading.Thread(target=self._read_loop, args=(child,), daemon=True,
                               name=f"offhub-reader-{proc.pid}").start()
        try:
            self._send(child, encode({"target": self.target, "args": self.args, "kwargs": self.kwargs,
                                      "path": [p for p in sys.path if p], "workers": self.workers}))
            if not child.ready.event.wait(self.start_timeout):
                proc.kill()
                raise OffHubTimeout(f"off-hub process {self.name} did not start within {self.start_timeout:g} s")
        except BaseException:
            proc.kill()
            raise
        if child.ready.error is not None:
            raise child.ready.error
        with self._state:
            self._child = child
        log.info("off-hub process %s started (pid %d)", self.name, proc.pid)
        return child

    def _send(self, child: _Child, frame: bytes) -> None:
        view = memoryview(frame)
        try:
            with self._write:
                while view:
                    view = view[child.proc.stdin.write(view):]
        except (OSError, ValueError) as exc:  # broken pipe, or closed meanwhile
            raise OffHubDied(f"off-hub process {self.name} (pid {child.proc.pid}) is gone: "
                             f"{type(exc).__name__}") from None

    def _read_loop(self, child: _Child) -> None:
        error: BaseException | None = None
        try:
            while (message := read_frame(child.proc.stdout.read)) is not None:
                self._deliver(child, message)
        except Exception as exc:  # noqa: BLE001  a torn or garbled stream: the child is as good as dead
            error = exc
            child.proc.kill()
        self._on_exit(child, error)

    def _deliver(self, child: _Child, message: dict) -> None:
        call_id = message.get("id")
        if call_id == 0:
            reply = child.ready
            if "e" in message:  # kept before the child's exit is seen: the back-off line names the real cause
                child.failure = f"{message['e'].get('name')}: {message['e'].get('message')}"
        else:
            with self._state:
                reply = self._pending.get(call_id)
        if reply is None:
            return  # its caller timed out and left
        if "e" in message:
            reply.set(error=rebuild_error(message["e"], f"{self.name} (pid {child.proc.pid})"))
        else:
            reply.set(value=message.get("r"))

    def _on_exit(self, child: _Child, error: BaseException | None) -> None:
        try:
            code = child.proc.wait(timeout=5)
        except self._subprocess.TimeoutExpired:
            child.proc.kill()
            code = child.proc.wait()
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        line = f"off-hub process {self.name} (pid {child.proc.pid}) {how}"
        if error is not None:
            line += f" after a broken reply ({type(error).__name__}: {error})"
        if not child.closing:
            with self._state:
                if self._child is child:
                    self._child = None
                self._deaths += 1
                delay = 0.0 if self._deaths <= 1 else min(self.max_backoff, 0.5 * 2 ** (self._deaths - 2))
                self._retry_at = time.monotonic() + delay
                self._last_error = child.failure or line
            if child.failure is None:
                log.warning("%s; the next call starts a new one", line)
        if not child.ready.event.is_set():
            child.ready.set(error=OffHubDied(line + " while starting"))
        self._fail_pending(child, OffHubDied(line + " during the call"))

    def _fail_pending(self, child: _Child, error: OffHubError) -> None:
        with self._state:
            replies = [r for r in self._pending.values() if r.child is child and not r.event.is_set()]
        for reply in replies:
            reply.set(error=error)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def rebuild_error(err: dict, where: str) -> Exception:
    """The child's exception as the same class (builtins and scaigrid's own), else RuntimeError with its name."""
    module, name, message = err.get("module", ""), err.get("name", "Exception"), err.get("message", "")
    exc: Exception | None = None
    if module == "builtins" or module.startswith(ALLOWED_ERROR_MODULES[1]):
        try:
            cls: Any = importlib.import_module(module)
            for part in name.split("."):
                cls = getattr(cls, part)
            if isinstance(cls, type) and issubclass(cls, Exception):
                # __new__, not cls(*args): subclasses whose __init__ formats the message (CollectionNotFound) would
                # format it twice; args and attributes are restored as they were.
                exc = cls.__new__(cls, *err.get("args", ()))
                exc.args = tuple(err.get("args", ()))
                exc.__dict__.update(err.get("attrs") or {})
                str(exc)  # structured builtins (UnicodeDecodeError) may not survive this: fall back below
        except Exception:  # noqa: BLE001
            exc = None
    if exc is None:
        exc = RuntimeError(f"{module}.{name}: {message}")
    exc.add_note(f"raised in off-hub process {where}:\n{err.get('traceback', '').rstrip()}")
    return exc
