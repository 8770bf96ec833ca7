"""Noticing a client that hangs up while its (non-streamed) answer is being made, so the work stops at once.

A write would notice too late: a plain answer is written only once it is done. So a greenthread peeks at the
client's socket, which reads as end-of-file the moment the client closes it.
"""
from __future__ import annotations

import socket
from typing import Callable


def watch_disconnect(environ: dict, on_gone: Callable[[], None]) -> None:
    """Block (green) until the request's connection closes, then call `on_gone` once. Returns without calling it
    if the client sends more (a pipelined request: it is still there). Kill the greenthread when the answer is
    ready. The body must have been read already, or its bytes would look like "still there"."""
    stream = environ.get("eventlet.input")
    sock = stream.get_socket() if hasattr(stream, "get_socket") else None
    if sock is None:
        return
    try:
        if sock.recv(1, socket.MSG_PEEK):
            return
    except OSError:  # reset by the peer: gone as well
        pass
    on_gone()
