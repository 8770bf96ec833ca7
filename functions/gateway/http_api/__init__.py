"""How the gateway parses requests into envelopes and renders envelopes into HTTP answers, per route `handler:`."""
from .anthropic_api import AnthropicRoute
from .json_route import JsonRoute
from .native import NativeRoute
from .openai_api import OpenAIRoute
from .openai_responses import ResponsesRoute

HANDLERS = {"json": JsonRoute(), "native": NativeRoute(), "openai": OpenAIRoute(), "anthropic": AnthropicRoute(),
            "responses": ResponsesRoute()}
