"""Reading a request body with a ceiling: refused by its Content-Length before a byte is read, and never buffered
past the limit when it comes chunked (no Content-Length)."""
from __future__ import annotations

import io

from werkzeug.wrappers import Request

from scaigrid.runtime.errors import PayloadTooLarge

READ_SIZE = 256 * 1024  # above glibc's mmap threshold: a refused body's buffers go back to the OS at once


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n / 2**10:g} KiB" if n >= 2**10 else f"{n} bytes"


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is over this route's limit of {_size(limit)}", param="body")


def read_body(request: Request, limit: int) -> None:
    """Read the body (at most `limit` bytes) and hand it to werkzeug as a plain, known-length stream, so that
    get_data(), form and files parse what was read here and nothing more. Raises PayloadTooLarge.

    Werkzeug alone would not do: eventlet's server does not set `wsgi.input_terminated`, so werkzeug reads a
    chunked body as empty instead of enforcing a limit on it."""
    environ = request.environ
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit)
    source = environ["wsgi.input"]
    want = limit + 1 if length is None else length  # one byte past the limit tells a chunked body is too long
    buffer = bytearray()
    while len(buffer) < want:
        piece = source.read(min(READ_SIZE, want - len(buffer)))
        if not piece:
            break
        buffer += piece
        if len(buffer) > limit:
            del buffer[:]
            raise too_large(limit)
    environ["wsgi.input"] = io.BytesIO(bytes(buffer))
    environ["CONTENT_LENGTH"] = str(len(buffer))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
