"""Tool calls and response_format through the chat route to an upstream that serves them (llama-cpp-python's
server, chatml-function-calling): passed on as sent, streamed tool-call deltas relayed intact, and counted in usage
when the upstream streams none. Local models refuse tools (tests/test_local_models.py)."""
import json

import httpx
import pytest

from surfaces import UPSTREAM, ledger_row

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
FORCED = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def stack(surfaces):
    return surfaces


def test_a_tool_call_comes_back_as_the_upstream_made_it_with_its_usage(stack):
    answer = stack.openai.chat.completions.create(model=UPSTREAM, messages=ASK, tools=WEATHER, tool_choice=FORCED,
                                                  max_tokens=40, temperature=0)
    call = answer.choices[0].message.tool_calls[0]
    assert answer.choices[0].finish_reason == "tool_calls"
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    row = ledger_row(stack, answer._request_id)
    assert row is not None and row[2:4] == (answer.usage.prompt_tokens, answer.usage.completion_tokens)
    assert answer.usage.completion_tokens > 0


def test_streamed_tool_call_deltas_are_relayed_intact_and_counted(stack):
    body = {"model": UPSTREAM, "messages": ASK, "tools": WEATHER, "tool_choice": FORCED, "max_tokens": 40,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", stack.base_url + "/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {stack.key['key']}"}) as r:
        rid = r.headers["x-request-id"]
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    calls = [d["tool_calls"] for d in deltas if d.get("tool_calls")]
    assert calls, deltas
    # the pieces are the upstream's own: index, id and name up front, then argument fragments that join into JSON
    assert calls[0][0]["index"] == 0 and calls[0][0]["function"]["name"] == "get_weather" and calls[0][0]["id"]
    arguments = "".join(piece[0]["function"].get("arguments") or "" for piece in calls)
    assert isinstance(json.loads(arguments)["city"], str)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    row = ledger_row(stack, rid)
    # this upstream streams no usage: ScaiGrid's estimate counts each tool-call piece, and the tools in the prompt
    assert row is not None and row[3] >= len(calls) > 0
    assert row[2] > len(json.dumps(ASK)) // 4


def test_response_format_reaches_the_upstream(stack):
    answer = stack.openai.chat.completions.create(
        model=UPSTREAM, max_tokens=24, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe Paris."}])
    # the server constrains its output to JSON when, and only when, it was asked for it
    assert answer.choices[0].message.content.lstrip().startswith("{")


ANTHROPIC_WEATHER = [{"name": "get_weather", "description": "The weather of a city",
                      "input_schema": WEATHER[0]["function"]["parameters"]}]


def test_messages_tools_round_trip_through_a_chat_upstream(stack):
    """Anthropic's tool use on /v1/messages: the tools and tool_choice become chat's, the call comes back as a
    tool_use block, and the tool's result goes back as a tool_result block (chat's `tool` message)."""
    forced = {"type": "tool", "name": "get_weather"}
    message = stack.client.messages.create(model=UPSTREAM, max_tokens=40, tools=ANTHROPIC_WEATHER,
                                           tool_choice=forced, messages=ASK, extra_body={"temperature": 0})
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert message.stop_reason == "tool_use" and use.name == "get_weather" and isinstance(use.input["city"], str)
    follow = stack.client.messages.create(model=UPSTREAM, max_tokens=16, tools=ANTHROPIC_WEATHER, messages=[
        *ASK, {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C and sunny"}]}])
    assert follow.content and follow.usage.input_tokens > message.usage.input_tokens
    with stack.client.messages.stream(model=UPSTREAM, max_tokens=40, tools=ANTHROPIC_WEATHER, tool_choice=forced,
                                      messages=ASK, extra_body={"temperature": 0}) as stream:
        kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in stream]
        final = stream.get_final_message()
    assert ("content_block_delta", "input_json_delta") in kinds and final.stop_reason == "tool_use"
    (streamed,) = [b for b in final.content if b.type == "tool_use"]
    assert streamed.name == "get_weather" and isinstance(streamed.input["city"], str)  # the deltas joined up


def test_messages_tools_on_a_local_model_are_refused_by_name(stack):
    r = httpx.post(stack.base_url + "/v1/messages", headers={"x-api-key": stack.key["key"]}, json={
        "model": "smollm2-135m-instruct", "max_tokens": 8, "tools": ANTHROPIC_WEATHER, "messages": ASK})
    assert r.status_code == 400 and r.json()["type"] == "error" and "tools" in r.json()["error"]["message"]


RESPONSES_WEATHER = [{"type": "function", "name": "get_weather", "description": "The weather of a city",
                      "parameters": WEATHER[0]["function"]["parameters"]}]


def test_responses_function_calls_round_trip_stored_or_sent_back(stack):
    forced = {"type": "function", "name": "get_weather"}
    asked = "What is the weather in Paris?"
    first = stack.openai.responses.create(model=UPSTREAM, input=asked, tools=RESPONSES_WEATHER, tool_choice=forced,
                                          max_output_tokens=40, temperature=0)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str) and call.call_id
    assert first.tools[0].name == "get_weather"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"}
    follow = stack.openai.responses.create(model=UPSTREAM, previous_response_id=first.id, input=[result],
                                           tools=RESPONSES_WEATHER, max_output_tokens=8, temperature=0)
    # the same conversation sent back by the client itself (stateless): the same prompt
    again = stack.openai.responses.create(model=UPSTREAM, store=False, tools=RESPONSES_WEATHER, max_output_tokens=8,
                                          temperature=0, input=[
                                              {"role": "user", "content": asked},
                                              {"type": "function_call", "call_id": call.call_id, "name": call.name,
                                               "arguments": call.arguments}, result])
    assert follow.usage.input_tokens == again.usage.input_tokens > first.usage.input_tokens


def test_responses_streamed_function_call_events_and_the_stored_call(stack):
    events = list(stack.openai.responses.create(
        model=UPSTREAM, input="What is the weather in Paris?", tools=RESPONSES_WEATHER, max_output_tokens=40,
        tool_choice={"type": "function", "name": "get_weather"}, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert done.arguments == deltas and isinstance(json.loads(deltas)["city"], str)
    final = events[-1]
    assert final.type == "response.completed"
    (call,) = [item for item in final.response.output if item.type == "function_call"]
    assert call.arguments == deltas and call.name == "get_weather"
    kept = stack.openai.responses.retrieve(final.response.id)
    assert [(i.type, getattr(i, "arguments", None)) for i in kept.output] == [
        (i.type, getattr(i, "arguments", None)) for i in final.response.output]
