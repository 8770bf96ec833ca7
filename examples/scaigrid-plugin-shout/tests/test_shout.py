"""The sample plugin's own tests: its hook on real HookContexts (no ScaiGrid processes needed)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaigrid.functions.plugins.kinds.base import HookContext  # noqa: E402
from scaigrid_plugin_shout import Shout  # noqa: E402


def test_after_shouts_and_exclaims():
    answer = {"choices": [{"message": {"role": "assistant", "content": "hello there"}}]}
    ctx = HookContext("after", Shout.Config(exclaim=True), "t", "r", {}, answer)
    Shout().hook(ctx)
    assert ctx.response["choices"][0]["message"]["content"] == "HELLO THERE!"


def test_chunks_shout_without_exclaiming():
    ctx = HookContext("chunk", Shout.Config(exclaim=True), "t", "r", {}, "hi ")
    Shout().hook(ctx)
    assert ctx.response == "HI "


def test_config_is_strict():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Shout.Config(volume=11)
