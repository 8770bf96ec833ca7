"""Chunking by tokens with overlap, on the embedding model's own tokenizer, cut where a sentence or a line ends
when one is near, so a chunk rarely stops mid-sentence. Chunks keep their character span in the document."""
from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

BOUNDARY = (".", "!", "?", "\n", ";", ":")


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start: int  # character offsets in the document
    end: int
    tokens: int


def chunk_text(text: str, tokenizer: Tokenizer, size: int = 256, overlap: int = 32) -> list[Chunk]:
    """Chunks of at most `size` tokens; each starts `overlap` tokens before the previous one ended."""
    if not 0 <= overlap < size:
        raise ValueError("overlap must be >= 0 and smaller than size")
    if tokenizer.padding or tokenizer.truncation:  # a model's tokenizer.json pads and cuts to its window
        tokenizer = Tokenizer.from_str(tokenizer.to_str())
        tokenizer.no_padding()
        tokenizer.no_truncation()
    encoding = tokenizer.encode(text, add_special_tokens=False)
    offsets = encoding.offsets
    chunks: list[Chunk] = []
    start = 0
    while start < len(offsets):
        end = min(start + size, len(offsets))
        if end < len(offsets):  # look back (at most a quarter of the chunk) for a sentence end
            for j in range(end - 1, max(start + size * 3 // 4, start) - 1, -1):
                if text[offsets[j][0]:offsets[j][1]].strip() in BOUNDARY or text[offsets[j][1]:offsets[j][1] + 1] == "\n":
                    end = j + 1
                    break
        char_start, char_end = offsets[start][0], offsets[end - 1][1]
        chunks.append(Chunk(len(chunks), text[char_start:char_end], char_start, char_end, end - start))
        if end == len(offsets):
            break
        start = max(end - overlap, start + 1)
    return chunks
