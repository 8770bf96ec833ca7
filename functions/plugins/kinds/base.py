"""What a plugin is: a `Config` model and one `hook(ctx)` called in the phases it declares.

Phases: `before` (the request, before the model), `after` (the whole answer), `chunk` (each streamed piece of
text, see pii_redaction for holding back a partial match). A hook changes `ctx.request` / `ctx.response` or the
texts through `ctx.map_texts`, keeps per-request memory in `ctx.state`, and refuses with PolicyRefusal. The steps
after `before` read the request's effective values (`ctx.params`: max_tokens, temperature, ...): a hook that changes
one changes it there too (max_tokens_clamp), one that replaces the whole request calls `ctx.replace_request`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from scaigrid.functions.shared.params import rewritten


class PluginConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class HookContext:
    phase: str                      # before | after | chunk
    config: Any                     # the plugin's validated Config
    tenant_id: str
    request_id: str
    request: dict                   # the request body (OpenAI shape for chat/completions/embeddings)
    response: Any = None            # the answer (after), or the chunk's text (chunk)
    state: dict = field(default_factory=dict)  # this plugin's memory for this request, across phases
    final: bool = False             # chunk: the stream ended; release whatever was held back
    params: dict = field(default_factory=dict)  # before: the request's effective values (shared/params.py)

    def replace_request(self, body: dict) -> None:
        """The request becomes `body` (a webhook's rewrite); the effective values follow it."""
        self.request.clear()
        self.request.update(body)
        rewritten(self.params, self.request)

    def map_texts(self, fn: Callable[[str], str]) -> None:
        """Apply `fn` to every text of this phase: the user's and system messages (before), the answer's
        content (after), the streamed text (chunk)."""
        if self.phase == "chunk":
            self.response = fn(self.response)
        elif self.phase == "before":
            body = self.request
            for message in body.get("messages") or []:
                if isinstance(message.get("content"), str):
                    message["content"] = fn(message["content"])
            for key in ("prompt", "input"):
                if isinstance(body.get(key), str):
                    body[key] = fn(body[key])
                elif isinstance(body.get(key), list):
                    body[key] = [fn(x) if isinstance(x, str) else x for x in body[key]]
        elif isinstance(self.response, dict):
            for choice in self.response.get("choices") or []:
                message = choice.get("message") or {}
                if isinstance(message.get("content"), str):
                    message["content"] = fn(message["content"])
                if isinstance(choice.get("text"), str):
                    choice["text"] = fn(choice["text"])


class Plugin:
    """Base of plugin kinds."""

    description: ClassVar[str] = ""
    phases: ClassVar[tuple[str, ...]] = ("before", "after", "chunk")
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    secret_fields: ClassVar[tuple[str, ...]] = ()  # stored encrypted

    def hook(self, ctx: HookContext) -> None:
        raise NotImplementedError
