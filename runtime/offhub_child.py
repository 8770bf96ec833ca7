"""The far side of runtime/offhub.py: a plain (never eventlet-patched) Python process that builds one object from a
`package.module:factory` target and serves method calls on it, several at a time, over its stdin and stdout.

Run as `python -m scaigrid.runtime.offhub_child`; the parent sends the target first. Frames both ways are a 4-byte
big-endian length and a msgpack body:

  parent -> child   {"target", "args", "kwargs", "path", "workers"}   once, first
                    {"id", "m": method, "a": args, "k": kwargs}        a call
  child -> parent   {"id": 0, "r": {"pid": ...}}                       the object is built (or "e": it failed)
                    {"id", "r": result} | {"id", "e": error}           a reply, in any order

stdin's end (the parent closed it, or died) ends the child. Knows nothing of AI.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import struct
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Callable

import msgpack

HEADER = struct.Struct(">I")
MAX_FRAME = 512 * 1024 * 1024  # a runaway length prefix fails loudly instead of allocating gigabytes
CLOSE_GRACE = 5.0  # seconds the object's close() may take once stdin ends


def encode(message: Any) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def read_frame(read: Callable[[int], bytes]) -> Any | None:
    """One message from `read` (a read(n) that may return short); None at a clean end of stream."""
    header = _read_exact(read, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    body = _read_exact(read, size)
    if body is None:
        raise EOFError("stream ended inside a frame")
    return decode(body)


def _read_exact(read: Callable[[int], bytes], n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        part = read(n - got)
        if not part:
            if got:
                raise EOFError("stream ended inside a frame")
            return None
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def describe_error(exc: BaseException) -> dict:
    """What the parent needs to raise the same error: class, args, attributes (those msgpack can carry)."""
    cls = type(exc)
    attrs = {k: v for k, v in vars(exc).items() if _portable(v)} if hasattr(exc, "__dict__") else {}
    args = list(exc.args) if _portable(list(exc.args)) else [str(exc)]
    return {"module": cls.__module__, "name": cls.__qualname__, "message": str(exc), "args": args, "attrs": attrs,
            "traceback": "".join(traceback.format_exception(exc)[-6:])}


def _portable(value: Any) -> bool:
    try:
        msgpack.packb(value, use_bin_type=True)
        return True
    except (TypeError, ValueError, OverflowError):
        return False


def load_target(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"target {target!r} must look like 'package.module:factory'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Server:
    """Reads calls on the main thread, runs them on a bounded pool, writes replies as they finish."""

    def __init__(self, rfile: BinaryIO, wfile: BinaryIO):
        self.rfile, self.wfile = rfile, wfile
        self.write_lock = threading.Lock()  # replies come from many pool threads; frames must not interleave
        self.obj: Any = None

    def reply(self, message: dict) -> None:
        try:
            frame = encode(message)
        except (TypeError, ValueError, OverflowError) as exc:  # an unportable result becomes the caller's error
            frame = encode({"id": message["id"], "e": describe_error(
                TypeError(f"the result cannot cross the process boundary: {exc}"))})
        with self.write_lock:
            try:
                self.wfile.write(frame)
                self.wfile.flush()
            except (BrokenPipeError, ValueError):
                pass  # the parent is gone; stdin's end follows and stops us

    def run_call(self, call: dict) -> None:
        try:
            method = call["m"]
            if not isinstance(method, str) or method.startswith("_"):
                raise AttributeError(f"no public method {method!r}")
            result = getattr(self.obj, method)(*call.get("a", ()), **call.get("k", {}))
            self.reply({"id": call["id"], "r": result})
        except Exception as exc:  # noqa: BLE001  every failure goes back to the caller, typed
            self.reply({"id": call["id"], "e": describe_error(exc)})

    def serve(self) -> int:
        init = read_frame(self.rfile.read)
        if init is None:
            return 0
        for entry in reversed(init.get("path") or []):  # the parent's sys.path: user modules import alike here
            if entry not in sys.path:
                sys.path.insert(0, entry)
        try:
            self.obj = load_target(init["target"])(*init.get("args", ()), **init.get("kwargs", {}))
        except Exception as exc:  # noqa: BLE001  a factory that fails (store down) is reported, then we stop
            self.reply({"id": 0, "e": describe_error(exc)})
            return 3
        self.reply({"id": 0, "r": {"pid": os.getpid()}})
        pool = ThreadPoolExecutor(max_workers=int(init.get("workers") or 8), thread_name_prefix="offhub")
        try:
            while (call := read_frame(self.rfile.read)) is not None:
                pool.submit(self.run_call, call)
        finally:
            self.shutdown(pool)
        return 0

    def shutdown(self, pool: ThreadPoolExecutor) -> None:
        """Close the object, but never hang on it: a blocked call or close must not outlive the parent."""
        pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.obj, "close", None)
        if callable(close):
            done = threading.Thread(target=close, daemon=True)
            done.start()
            done.join(CLOSE_GRACE)


def main() -> int:
    # Frames own the real stdout; anything else that prints (libraries, C code writing to fd 1) lands on stderr.
    out_fd, in_fd = os.dup(1), os.dup(0)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # nothing but us may read the call stream
    os.close(devnull)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which closes us through stdin
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("SCAIGRID_LOG_LEVEL", "WARNING").upper(),
                        format=f"offhub[{os.getpid()}] %(levelname)s %(name)s: %(message)s")
    try:
        with os.fdopen(in_fd, "rb", buffering=0) as rfile, os.fdopen(out_fd, "wb") as wfile:
            code = Server(rfile, wfile).serve()
    except Exception:  # noqa: BLE001  a garbled stream: say so on stderr, and still exit at once below
        logging.exception("off-hub child stopped")
        code = 2
    sys.stderr.flush()
    os._exit(code)  # pool threads stuck in a blocking call must not keep the process alive


if __name__ == "__main__":
    main()
