"""URLs as logs and error messages may show them: scheme://host[:port] and nothing else. A webhook URL carries
tokens in its query string or userinfo, an upstream base URL may carry a key or a tenant's path; httpx puts the
full URL into its exception messages and its INFO line, urllib3 the request's path and query into its DEBUG line,
so those pass through here too."""
from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

# a scheme, "://", then everything up to whitespace or a quote: how httpx and tracebacks quote a URL
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_HIDDEN = "<url>"
# urllib3's `http://host:port "POST /path?query HTTP/1.1" 200 123`: the origin is redacted as a URL, the path here
_REQUEST_LINE = re.compile(r'"([A-Z]+) [^\s"]+ (HTTP/[0-9.]+)"')


def redact_url(url: object) -> str:
    """`scheme://host[:port]` of a URL (a str or an httpx.URL): no userinfo, path, query or fragment."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname
    except ValueError:  # unparseable: showing any of it could show the secret
        return _HIDDEN
    if not parts.scheme or not host:
        return _HIDDEN
    try:
        port = parts.port
    except ValueError:  # a port out of range is no secret, but not worth a second parse either
        port = None
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port is not None else "")


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (an exception's message, a log line), and a quoted HTTP request line's
    path too."""
    return _REQUEST_LINE.sub(r'"\1 <path> \2"', _URL.sub(lambda m: redact_url(m.group(0)), text))


def error_text(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` of an exception for a log field, URLs redacted, cut to `limit` characters."""
    return redact_text(f"{type(exc).__name__}: {exc}")[:limit]


class RedactUrls(logging.Filter):
    """Rewrites a record's message with its URLs redacted (httpx logs `HTTP Request: POST <full URL> ...` at
    INFO, urllib3 its request lines at DEBUG; the graph's processes may log both)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "://" in message or '"' in message:
            record.msg, record.args = redact_text(message), None
        return True


_FILTER = RedactUrls()
HTTP_LOGGERS = ("httpx", "urllib3.connectionpool")


def guard_http_logs() -> None:
    """Install the filter on the HTTP clients' loggers once; every module that calls out over HTTP calls this."""
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
