"""The plugin function: each tenant's chain of plugins before the model, after it, and on every streamed chunk.

Placed inline: a tenant with no plugins costs a dictionary lookup per step. Chains change through the native API
and apply everywhere within a second (PluginStore's cache is dropped over Redis pub/sub). Both caches here are
bounded (function config `plugin_cache_size`, `plugin_parsed_cache_size`): memory stays flat with the tenant count.
"""
from __future__ import annotations

import copy

from cachetools import TTLCache
from nameko.extensions import DependencyProvider
from nameko.rpc import rpc
from pydantic import SecretStr, ValidationError

from scaigrid.adapters.sql.plugin_store import PluginStore
from scaigrid.runtime.errors import BadRequest, NotFound

from ..shared.access import PLATFORM, principal_of, require_manager
from ..shared.params import request_params
from .kinds import HookContext, kinds

PARSED_CACHE_SIZE = 10_000  # plugins kept parsed per process: a kind instance and its config, ~0.8 KB each
PARSED_TTL = 600.0  # and for at most this long, so memory follows the plugins in use, not every plugin ever seen


class ParsedPlugins(DependencyProvider):
    """Each plugin row's kind instance and validated config, made once per version of the row (it is rebuilt when
    `updated_at` changes) rather than on every request. Function config `plugin_parsed_cache_size` (default
    10,000 plugins): past it the least recently used go; an entry also goes PARSED_TTL after it was made. Either
    way it comes back with one model_validate (kinds are stateless, so a fresh instance behaves the same)."""

    def setup(self):
        options = self.container.config.get("SCAIGRID_FUNCTION_CONFIG", {})
        self.cache = TTLCache(max(1, int(options.get("plugin_parsed_cache_size", PARSED_CACHE_SIZE))), PARSED_TTL)

    def get_dependency(self, worker_ctx):
        return self.cache


def _config_error(exc: ValidationError) -> BadRequest:
    first = exc.errors()[0]
    field = ".".join(["config", *map(str, first["loc"])])
    return BadRequest(f"{field}: {first['msg']}", code="invalid_plugin_config", param=field)


def _chunk_text(data) -> str | None:
    if isinstance(data, dict):
        choices = data.get("choices")
        if choices and isinstance(choices[0], dict):
            delta = choices[0].get("delta") or {}
            return delta.get("content") if "content" in delta else choices[0].get("text")
        return data.get("text")
    return None


def _with_text(data, text: str):
    data = copy.deepcopy(data)
    if isinstance(data, dict) and data.get("choices"):
        choice = data["choices"][0]
        if "delta" in choice:
            choice["delta"]["content"] = text
        else:
            choice["text"] = text
    elif isinstance(data, dict):
        data["text"] = text
    return data


class Plugins:
    name = "plugins"
    stores = ("postgres", "redis")
    store = PluginStore()
    parsed = ParsedPlugins()  # plugin id -> (updated_at, plugin object, validated config)

    def _chain(self, envelope: dict, phase: str) -> list:
        tenant = envelope.get("tenant")
        if not tenant:
            return []
        out = []
        for row in self.store.chain(tenant):
            cached = self.parsed.get(row["id"])
            if cached is None or cached[0] != row["updated_at"]:
                kind = kinds().get(row["kind"])
                if kind is None:  # uninstalled since it was configured: skip, loudly in the kinds list
                    continue
                cached = self.parsed[row["id"]] = (row["updated_at"], kind(), kind.Config.model_validate(row["config"]))
            _, plugin, config = cached
            if phase in plugin.phases:
                out.append((row["id"], plugin, config))
        return out

    def _run(self, envelope: dict, phase: str, request: dict, response=None, final: bool = False,
             params: dict | None = None):
        states = envelope["context"].setdefault("plugins", {})
        for plugin_id, plugin, config in self._chain(envelope, phase):
            ctx = HookContext(phase, config, envelope["tenant"], envelope["id"], request, response,
                              states.setdefault(plugin_id, {}), final, {} if params is None else params)
            plugin.hook(ctx)
            request, response = ctx.request, ctx.response
        return request, response

    @rpc
    def before(self, envelope: dict) -> dict:
        """The tenant's plugins on the request body, in order (redact, refuse, inject, clamp, call out)."""
        body = envelope["request"].get("body")
        if isinstance(body, dict) and self._chain(envelope, "before"):
            envelope["request"]["body"], _ = self._run(envelope, "before", body,
                                                       params=request_params(envelope["request"]))
        return envelope

    @rpc
    def after(self, envelope: dict) -> dict:
        """The tenant's plugins on the whole answer. Streamed answers went through `on_chunk` instead."""
        if envelope["context"].get("stream") or envelope.get("response") is None:
            return envelope
        if self._chain(envelope, "after"):
            _, envelope["response"] = self._run(envelope, "after", envelope["request"].get("body") or {},
                                                envelope["response"])
        return envelope

    @rpc
    def on_chunk(self, chunk: dict) -> dict:
        """A streamed chunk through the tenant's chunk hooks; `emit` is what goes to the client (text held back
        by a hook comes out later, at the latest with the final call, which has no data)."""
        if not self._chain(chunk, "chunk"):
            chunk["emit"] = [chunk["data"]] if chunk.get("data") is not None else []
            return chunk
        state = chunk["context"].setdefault("plugins", {}).setdefault("_chunks", {})
        data = chunk.get("data")
        text = _chunk_text(data)
        if data is not None and text is None:  # a chunk without text (role, finish_reason): pass it on
            chunk["emit"] = [data]
            return chunk
        if data is not None:
            state["template"] = data
        _, text = self._run(chunk, "chunk", {}, text or "", final=chunk.get("final", False))
        template = data if data is not None else state.get("template")
        chunk["emit"] = [_with_text(template, text)] if text and template is not None else []
        return chunk

    # native API ---------------------------------------------------------------------------------------
    @rpc
    def create(self, envelope: dict) -> dict:
        """POST /api/v1/plugins {name, kind, config, position?, enabled?, tenant_id?}."""
        principal = principal_of(envelope)
        body = envelope["request"]["body"]
        tenant_id = body.get("tenant_id") or principal["tenant_id"]
        require_manager(principal, tenant_id)
        kind = kinds().get(body["kind"])
        if kind is None:
            raise BadRequest(f"unknown plugin kind '{body['kind']}'; installed: {', '.join(sorted(kinds()))}",
                             code="unknown_plugin_kind", param="kind")
        try:
            config = kind.Config.model_validate(body.get("config") or {})
        except ValidationError as exc:
            raise _config_error(exc) from None
        plain = {k: v.get_secret_value() if isinstance(v, SecretStr) else v
                 for k, v in config.model_dump(mode="python").items()}
        envelope["response"] = self.store.create(tenant_id, body["name"], body["kind"], plain, kind.secret_fields,
                                                 body.get("position", 100), body.get("enabled", True))
        return envelope

    @rpc
    def list(self, envelope: dict) -> dict:
        """GET /api/v1/plugins[?tenant_id=]: a tenant's chain in order, secrets masked."""
        principal = principal_of(envelope)
        tenant_id = (envelope["request"].get("query") or {}).get("tenant_id") or principal["tenant_id"]
        require_manager(principal, tenant_id)
        envelope["response"] = {"object": "list", "data": self.store.list(tenant_id), "has_more": False,
                                "next_after": None}
        return envelope

    @rpc
    def update(self, envelope: dict) -> dict:
        """PATCH /api/v1/plugins/{plugin_id} {enabled}."""
        plugin = self._mine(envelope)
        envelope["response"] = self.store.set_enabled(plugin["id"], envelope["request"]["body"]["enabled"])
        return envelope

    @rpc
    def delete(self, envelope: dict) -> dict:
        """DELETE /api/v1/plugins/{plugin_id}."""
        plugin = self._mine(envelope)
        self.store.delete(plugin["id"], plugin["tenant_id"])
        envelope["response"] = {**plugin, "deleted": True}
        return envelope

    @rpc
    def kinds(self, envelope: dict) -> dict:
        """GET /api/v1/plugins/kinds: every installed kind with its config's JSON Schema."""
        principal_of(envelope)
        envelope["response"] = {"object": "list", "data": [
            {"kind": name, "description": cls.description, "phases": list(cls.phases),
             "config_schema": cls.Config.model_json_schema()} for name, cls in sorted(kinds().items())]}
        return envelope

    def _mine(self, envelope: dict) -> dict:
        principal = principal_of(envelope)
        plugin = self.store.get(envelope["request"]["path"]["plugin_id"])
        if plugin is None or (principal["role"] != PLATFORM and plugin["tenant_id"] != principal["tenant_id"]):
            raise NotFound("no such plugin", code="plugin_not_found")
        require_manager(principal, plugin["tenant_id"])
        return plugin
