"""Ingestion's first two stages on real inputs: text out of Markdown, HTML and PDF, then token chunks."""
import subprocess

import pytest
from tokenizers import Tokenizer

from scaigrid.adapters.backends import EMBED_MODEL, model_dir_for
from scaigrid.adapters.documents import UnsupportedDocument, extract_text
from scaigrid.functions.ingest.chunking import chunk_text
from scaigrid.runtime.testing import SCAIGRID


def make_pdf(lines: list[str]) -> bytes:
    """A real one-page PDF (Helvetica text), written out object by object with a correct xref table."""
    stream = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in lines) + " ET"
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               "/Resources << /Font << /F1 5 0 R >> >> >>",
               f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_markdown_loses_its_markup_not_its_words():
    md = "# Title\n\nSome *emphasis* and a [link](http://x.io).\n\n```\ncode here\n```\n- item one\n- item two\n"
    text = extract_text(md.encode(), "text/markdown")
    assert "Title" in text and "Some emphasis and a link." in text and "code here" in text and "item two" in text
    assert "*" not in text and "](" not in text and "#" not in text


def test_html_drops_scripts_and_styles():
    html = ("<html><head><title>t</title><style>p{color:red}</style></head><body><h1>Heading</h1>"
            "<p>First&nbsp;paragraph.</p><script>alert('x')</script><p>Second.</p></body></html>")
    text = extract_text(html.encode(), filename="page.html")
    assert text.split("\n\n") == ["Heading", "First paragraph.", "Second."] or text == "Heading\nFirst paragraph.\nSecond."
    assert "alert" not in text and "color" not in text


def test_pdf_text_comes_out():
    text = extract_text(make_pdf(["Hello PDF world.", "Second line here."]), "application/pdf")
    assert "Hello PDF world." in text and "Second line here." in text


@pytest.mark.parametrize("data, content_type, filename, needle", [
    (b"x", "image/png", None, "cannot read image/png"),
    (b"\xff\xfe\x00bad", "text/plain", None, "not UTF-8"),
    (b"not a pdf at all", "application/pdf", None, "not a readable PDF"),
    (b"x", None, "notes.docx", "cannot read notes.docx"),
])
def test_what_cannot_be_read_says_so(data, content_type, filename, needle):
    with pytest.raises(UnsupportedDocument, match=needle):
        extract_text(data, content_type, filename)


@pytest.fixture(scope="module")
def tokenizer():
    """The embedding model's own tokenizer (prepared once; idempotent)."""
    subprocess.run([*SCAIGRID, "models", "prepare", EMBED_MODEL, "--quiet"], check=True, timeout=3600)
    return Tokenizer.from_file(str(model_dir_for(EMBED_MODEL) / "tokenizer.json"))


def test_chunks_respect_size_overlap_and_sentences(tokenizer):
    text = " ".join(f"Sentence number {i} talks about topic {i % 7} in some detail." for i in range(120))
    chunks = chunk_text(text, tokenizer, size=64, overlap=16)
    assert len(chunks) > 5 and all(c.tokens <= 64 for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end  # consecutive chunks overlap
        assert text[a.start:a.end] == a.text
    assert sum(c.text.endswith(".") for c in chunks[:-1]) >= len(chunks) - 2  # cut where sentences end


def test_short_text_is_one_chunk_and_bad_overlap_is_refused(tokenizer):
    (only,) = chunk_text("Just one short sentence.", tokenizer, size=64, overlap=8)
    assert only.text == "Just one short sentence." and only.index == 0
    with pytest.raises(ValueError):
        chunk_text("x", tokenizer, size=10, overlap=10)
    assert chunk_text("", tokenizer) == []


def test_media_type_is_the_given_one_when_readable_else_the_extensions():
    from scaigrid.adapters.documents import media_type_of

    assert media_type_of("text/x-markdown; charset=utf-8", "notes") == "text/x-markdown"
    assert media_type_of(None, "page.htm") == "text/html"  # the extension's, for every spelling extract_text reads
    assert media_type_of("application/octet-stream", "guide.PDF") == "application/pdf"
    with pytest.raises(UnsupportedDocument, match="text/plain, text/markdown, text/html or application/pdf"):
        media_type_of(None, "report.docx")
