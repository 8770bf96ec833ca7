"""PII redaction: e-mail addresses, phone numbers, IBANs (mod-97 checked), card numbers (Luhn checked), IP addresses.

Before the model: the user's texts are redacted to placeholders (`[EMAIL_1]`). With `reversible`, the answer gets
the originals back (the model never saw them). The answer's own PII is redacted too. Streamed answers: text is held
back until no match can still be growing (a window of `hold_chars`, cut at whitespace and never inside a match), so
no piece of an e-mail or card number leaves before it is known; the rest is released when the stream ends.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field

from .base import HookContext, Plugin, PluginConfig

Entity = Literal["email", "phone", "iban", "card", "ip"]
PATTERNS: list[tuple[str, re.Pattern]] = [  # order matters: longer, checked formats first
    ("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")),
    ("card", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")),
    ("ip", re.compile(r"(?<![\w.:])(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![\w.:])")),
    ("phone", re.compile(r"(?<![\w+(])(?:\+?\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?!\w)")),
]
PLACEHOLDER = re.compile(r"\[(EMAIL|PHONE|IBAN|CARD|IP)_(\d+)\]")


def luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total, alt = total + d, not alt
    return total % 10 == 0


def iban_ok(value: str) -> bool:
    s = value.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    n = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(n) % 97 == 1


def _valid(kind: str, text: str) -> bool:
    if kind == "card":
        digits = re.sub(r"\D", "", text)
        return 13 <= len(digits) <= 19 and luhn(digits)
    if kind == "iban":
        return iban_ok(text)
    if kind == "ip":
        try:
            ipaddress.ip_address(text)
            return True
        except ValueError:
            return False
    if kind == "phone":  # an international prefix, or enough digits not to be an order number
        digits = len(re.sub(r"\D", "", text))
        return 7 <= digits <= 15 and (text.startswith("+") or digits >= 9)
    return True


def find(text: str, entities) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) spans of PII in `text`."""
    spans: list[tuple[int, int, str]] = []
    for kind, pattern in PATTERNS:
        if kind not in entities:
            continue
        for m in pattern.finditer(text):
            if _valid(kind, m.group()) and not any(s < m.end() and m.start() < e for s, e, _ in spans):
                spans.append((m.start(), m.end(), kind))
    return sorted(spans)


class PiiRedaction(Plugin):
    description = "Redact e-mails, phone numbers, IBANs, card numbers and IP addresses; optionally reversible."

    class Config(PluginConfig):
        entities: list[Entity] = Field(default_factory=lambda: ["email", "phone", "iban", "card", "ip"])
        reversible: bool = Field(False, description="restore the user's own values in the answer")
        hold_chars: int = Field(64, ge=16, le=1024, description="streaming: text held back while a match may grow")

    def _redact(self, ctx: HookContext, text: str) -> str:
        out, last = [], 0
        originals: dict = ctx.state.setdefault("originals", {})
        counts: dict = ctx.state.setdefault("counts", {})
        for start, end, kind in find(text, ctx.config.entities):
            value = text[start:end]
            label = next((p for p, v in originals.items() if v == value), None)
            if label is None:
                counts[kind] = counts.get(kind, 0) + 1
                label = f"[{kind.upper()}_{counts[kind]}]"
                originals[label] = value
            out += [text[last:start], label]
            last = end
        return "".join(out) + text[last:]

    def _answer(self, ctx: HookContext, text: str) -> str:
        """The answer's text: its own PII redacted, the user's placeholders restored when reversible."""
        mine = {label for label in ctx.state.get("originals", {})}
        text = self._redact(ctx, text)
        if ctx.config.reversible:
            originals = ctx.state.get("originals", {})
            text = PLACEHOLDER.sub(lambda m: originals[m.group()] if m.group() in mine else m.group(), text)
        return text

    def hook(self, ctx: HookContext) -> None:
        if ctx.phase == "before":
            ctx.map_texts(lambda t: self._redact(ctx, t))
        elif ctx.phase == "after":
            ctx.map_texts(lambda t: self._answer(ctx, t))
        else:
            buf = ctx.state.get("held", "") + (ctx.response or "")
            cut = len(buf) if ctx.final else self._safe_cut(ctx, buf)
            ctx.state["held"] = buf[cut:]
            ctx.response = self._answer(ctx, buf[:cut]) if cut else ""

    def _safe_cut(self, ctx: HookContext, buf: str) -> int:
        limit = len(buf) - ctx.config.hold_chars
        if limit <= 0:
            return 0
        cut = max(buf.rfind(" ", 0, limit + 1), buf.rfind("\n", 0, limit + 1))
        cut = cut + 1 if cut >= 0 else 0
        for start, end, _ in find(buf, ctx.config.entities):  # never cut through a match
            if start < cut < end:
                cut = start
        return cut
