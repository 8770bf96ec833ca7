"""Chunk windows (functions/ingest/chunking.py) on the embedding model's real tokenizer: at most `size` tokens,
`overlap` tokens shared with the previous chunk, cut at a sentence or line end only within the window's last
quarter, character spans that slice the document exactly, and the model's padding/truncation ignored."""
import pytest

from scaigrid.functions.ingest.chunking import chunk_text

WORDS = "cat dog sun sea red sky box hat pen cup".split()  # one token each


def words(n: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


@pytest.mark.parametrize("size, overlap", [(10, 10), (10, 11), (10, -1), (0, 0)])
def test_overlap_must_be_smaller_than_size(tokenizer, size, overlap):
    with pytest.raises(ValueError):
        chunk_text("some text", tokenizer, size, overlap)


def test_nothing_to_chunk(tokenizer):
    assert chunk_text("", tokenizer) == [] and chunk_text(" \n\t ", tokenizer) == []


def test_a_short_text_is_one_chunk(tokenizer):
    text = "  A short note.  "
    [chunk] = chunk_text(text, tokenizer, 16, 4)
    assert (chunk.index, chunk.text, chunk.tokens) == (0, "A short note.", 4)
    assert text[chunk.start:chunk.end] == chunk.text


def test_windows_share_exactly_the_overlap(tokenizer):
    text = words(100)
    chunks = chunk_text(text, tokenizer, size=10, overlap=3)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.tokens == 10 for c in chunks[:-1]) and chunks[-1].end == len(text)
    for before, after in zip(chunks, chunks[1:]):
        assert after.text.split()[:3] == before.text.split()[-3:]
        assert text[after.start:before.end] == " ".join(before.text.split()[-3:])
    assert len(chunks) == 1 + -(-(100 - 10) // 7)  # every step moves 10 - 3 tokens


def test_no_overlap_covers_every_token_once(tokenizer):
    text = words(45)
    chunks = chunk_text(text, tokenizer, size=10, overlap=0)
    assert " ".join(c.text for c in chunks) == text
    assert [c.tokens for c in chunks] == [10, 10, 10, 10, 5]


def test_one_token_windows(tokenizer):
    chunks = chunk_text(words(5), tokenizer, size=1, overlap=0)
    assert [c.text for c in chunks] == WORDS[:5]


def test_a_sentence_end_in_the_last_quarter_ends_the_chunk(tokenizer):
    sentence = words(7) + "."  # 8 tokens
    text = " ".join([sentence] * 5)
    first = chunk_text(text, tokenizer, size=20, overlap=2)[0]
    assert first.text == " ".join([sentence] * 2) and first.tokens == 16  # the '.' at token 16 of 20


def test_a_sentence_end_before_the_last_quarter_is_not_used(tokenizer):
    text = "Hi. " + words(40)
    first = chunk_text(text, tokenizer, size=20, overlap=0)[0]
    assert first.tokens == 20 and first.text.startswith("Hi. cat")


def test_a_line_end_is_a_boundary_too(tokenizer):
    text = words(17) + "\n" + words(20)
    first = chunk_text(text, tokenizer, size=20, overlap=0)[0]
    assert first.text == words(17) and first.tokens == 17


def test_the_model_s_padding_and_truncation_do_not_cut_the_document(tokenizer):
    assert tokenizer.truncation and tokenizer.padding  # tokenizer.json as the model ships it: 128 tokens
    text = words(600)
    chunks = chunk_text(text, tokenizer, size=200, overlap=20)
    assert chunks[-1].end == len(text) and sum(c.tokens for c in chunks) == 600 + 20 * (len(chunks) - 1)
    assert tokenizer.truncation and tokenizer.padding  # the caller's tokenizer is left as it was


def test_spans_are_the_document_s_own_characters(tokenizer):
    text = "Ünïcödé café — naïve résumé. " * 6
    for chunk in chunk_text(text, tokenizer, size=12, overlap=3):
        assert text[chunk.start:chunk.end] == chunk.text  # accents kept: not the normalised tokens
        assert chunk.tokens <= 12
