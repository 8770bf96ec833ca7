"""Plugin kinds: each a class with a pydantic `Config` and one `hook(ctx)`; found through the `scaigrid.plugins`
entry point group (the built-ins below are registered there too, like any third-party plugin)."""
from __future__ import annotations

from importlib.metadata import entry_points

from .base import HookContext, Plugin

__all__ = ["HookContext", "Plugin", "kinds"]
_KINDS: dict[str, type[Plugin]] | None = None


def kinds() -> dict[str, type[Plugin]]:
    """Every installed plugin kind, by name."""
    global _KINDS
    if _KINDS is None:
        _KINDS = {ep.name: ep.load() for ep in entry_points(group="scaigrid.plugins")}
    return _KINDS
