"""System-prompt injection: put the tenant's system prompt (a template) in front of every chat request."""
from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from .base import HookContext, Plugin, PluginConfig


class SystemPrompt(Plugin):
    description = "Prepend, append or replace the system message; {tenant_id}, {request_id}, {date} are filled in."
    phases = ("before",)

    class Config(PluginConfig):
        content: str = Field(min_length=1, max_length=20000)
        mode: Literal["prepend", "append", "replace"] = "prepend"

    def hook(self, ctx: HookContext) -> None:
        messages = ctx.request.get("messages")
        if not isinstance(messages, list):
            return
        text = ctx.config.content.format_map({"tenant_id": ctx.tenant_id, "request_id": ctx.request_id,
                                              "date": time.strftime("%Y-%m-%d")})
        if ctx.config.mode == "replace":
            messages[:] = [m for m in messages if m.get("role") != "system"]
        if ctx.config.mode == "append" and messages and messages[0].get("role") == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{text}"
        else:
            messages.insert(0, {"role": "system", "content": text})
