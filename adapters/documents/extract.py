"""Text out of uploaded documents: plain text, Markdown, HTML, PDF. Well-kept parsers do the parsing
(markdown-it-py, BeautifulSoup, pypdf); this module only picks one and normalises what comes out."""
from __future__ import annotations

import io
import re

SUPPORTED = {
    "text/plain": "text", "text/markdown": "markdown", "text/x-markdown": "markdown", "text/html": "html",
    "application/pdf": "pdf",
}
BY_SUFFIX = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html",
             ".htm": "html", ".pdf": "pdf"}


class UnsupportedDocument(ValueError):
    """A format this product cannot read, or a file that is not what it claims."""


def kind_of(content_type: str | None, filename: str | None) -> str:
    if content_type and content_type.split(";")[0].strip().lower() in SUPPORTED:
        return SUPPORTED[content_type.split(";")[0].strip().lower()]
    suffix = ("." + filename.rsplit(".", 1)[1].lower()) if filename and "." in filename else ""
    if suffix in BY_SUFFIX:
        return BY_SUFFIX[suffix]
    raise UnsupportedDocument(f"cannot read {content_type or filename or 'this document'}; send text/plain, "
                              f"text/markdown, text/html or application/pdf")


MEDIA_TYPES = {"text": "text/plain", "markdown": "text/markdown", "html": "text/html", "pdf": "application/pdf"}


def media_type_of(content_type: str | None, filename: str | None) -> str:
    """The document's media type: the one given, when this module reads it, else the one the name's extension
    implies. UnsupportedDocument (naming what is accepted) when neither is readable."""
    kind = kind_of(content_type, filename)
    given = (content_type or "").split(";")[0].strip().lower()
    return given if given in SUPPORTED else MEDIA_TYPES[kind]


def _tidy(text: str) -> str:
    # NUL carries no meaning (PDF extraction produces some) and PostgreSQL text cannot hold it
    text = text.replace("\r\n", "\n").replace("\u00a0", " ").replace("\x00", "")
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n\s*", "\n\n", text).strip()


def _markdown(data: str) -> str:
    from markdown_it import MarkdownIt

    out: list[str] = []
    for token in MarkdownIt().parse(data):
        if token.type == "inline":
            out.append("".join(c.content for c in token.children or [] if c.type in ("text", "code_inline"))
                       or token.content)
        elif token.type in ("fence", "code_block"):
            out.append(token.content)
        elif token.type.endswith("_close") and token.block:
            out.append("\n\n")
    return "".join(out)


def _html(data: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    return soup.get_text("\n")


def _pdf(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UnsupportedDocument("the PDF is encrypted; upload an unlocked copy")
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except PdfReadError as exc:
        raise UnsupportedDocument(f"not a readable PDF ({exc})") from None


def extract_text(data: bytes, content_type: str | None = None, filename: str | None = None) -> str:
    """The document's text, tidied (runs of spaces and blank lines collapsed)."""
    kind = kind_of(content_type, filename)
    if kind == "pdf":
        return _tidy(_pdf(data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsupportedDocument("the document is not UTF-8 text") from None
    return _tidy({"text": lambda t: t, "markdown": _markdown, "html": _html}[kind](text))
