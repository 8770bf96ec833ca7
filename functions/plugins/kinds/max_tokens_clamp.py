"""Per-tenant max_tokens clamp: no request asks for more than the tenant allows (and none asks for unlimited)."""
from __future__ import annotations

from pydantic import Field

from .base import HookContext, Plugin, PluginConfig


class MaxTokensClamp(Plugin):
    description = "Clamp max_tokens (and max_completion_tokens) to a ceiling; set it when the request omits it."
    phases = ("before",)

    class Config(PluginConfig):
        max_tokens: int = Field(ge=1, le=1_000_000)

    def hook(self, ctx: HookContext) -> None:
        ceiling = ctx.config.max_tokens
        asked = [ctx.request.get(k) for k in ("max_tokens", "max_completion_tokens") if ctx.request.get(k)]
        ctx.request["max_tokens"] = min([ceiling, *[a for a in asked if isinstance(a, int)]])
        ctx.request.pop("max_completion_tokens", None)
