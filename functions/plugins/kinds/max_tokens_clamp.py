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
        limit = min(ceiling, ctx.params.get("max_tokens") or ceiling)  # the request's one limit, either field's
        # the steps read params; an upstream gets the body, under the one name every OpenAI-compatible server knows
        ctx.params["max_tokens"] = ctx.request["max_tokens"] = limit
        ctx.request.pop("max_completion_tokens", None)
