"""Deny-list guard: keywords and regular expressions. A request that matches is refused with a policy error; in the
answer (and in streamed text) a match is replaced by `[removed]`, since what was streamed cannot be recalled."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from scaigrid.runtime.errors import PolicyRefusal

from .base import HookContext, Plugin, PluginConfig


class DenyList(Plugin):
    description = "Refuse requests (and scrub answers) that contain listed words or match listed patterns."

    class Config(PluginConfig):
        words: list[str] = Field(default_factory=list, max_length=1000, description="case-insensitive, whole words")
        patterns: list[str] = Field(default_factory=list, max_length=200, description="Python regular expressions")
        check: list[Literal["request", "answer"]] = Field(default_factory=lambda: ["request"])
        message: str = Field("this request is not allowed by the tenant's policy", max_length=500)

        @field_validator("patterns")
        @classmethod
        def _compiles(cls, v: list[str]) -> list[str]:
            for p in v:
                try:
                    re.compile(p)
                except re.error as exc:
                    raise ValueError(f"pattern {p!r} does not compile: {exc}") from None
            return v

    def _regex(self, config) -> re.Pattern | None:
        parts = [rf"\b{re.escape(w)}\b" for w in config.words] + [f"(?:{p})" for p in config.patterns]
        return re.compile("|".join(parts), re.IGNORECASE) if parts else None

    def hook(self, ctx: HookContext) -> None:
        regex = self._regex(ctx.config)
        if regex is None:
            return
        if ctx.phase == "before" and "request" in ctx.config.check:
            def check(text: str) -> str:
                if regex.search(text):
                    raise PolicyRefusal(ctx.config.message, code="content_policy_violation")
                return text
            ctx.map_texts(check)
        elif ctx.phase in ("after", "chunk") and "answer" in ctx.config.check:
            ctx.map_texts(lambda text: regex.sub("[removed]", text))
