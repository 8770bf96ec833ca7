"""A sample third-party plugin: upper-cases the model's answers (whole and streamed), optionally with a '!'."""
from pydantic import Field

from scaigrid.functions.plugins.kinds.base import HookContext, Plugin, PluginConfig


class Shout(Plugin):
    description = "Upper-case the answer (a sample entry-point plugin)."
    phases = ("after", "chunk")

    class Config(PluginConfig):
        exclaim: bool = Field(False, description="end the answer with '!'")

    def hook(self, ctx: HookContext) -> None:
        ctx.map_texts(str.upper)
        if ctx.config.exclaim and ctx.phase == "after":
            ctx.map_texts(lambda text: text + "!")
