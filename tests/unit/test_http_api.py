"""The gateway's HTTP edge without a server, on werkzeug test requests: the body ceiling (declared and chunked),
JSON parsing and what the bus could not carry, OpenAI's validation (a 400 naming the param, the body kept as sent),
the native handler's NUL and multipart checks, the end of an SSE stream, and errors in OpenAI's shape."""
import io
import json

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from scaigrid.functions.gateway.http_api import HANDLERS
from scaigrid.functions.gateway.http_api.body import read_body
from scaigrid.functions.gateway.http_api.responses import error_body, error_response
from scaigrid.runtime.envelope import new_envelope
from scaigrid.runtime.errors import (BadRequest, Forbidden, NotFound, PayloadTooLarge, StepError, StepTimeout,
                                     Unauthorized, Unavailable, UpstreamError)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def http(data: bytes = b"", chunked: bool = False, **builder) -> Request:
    environ = EnvironBuilder(method="POST", path="/", data=data, **builder).get_environ()
    if chunked:  # no Content-Length: the body's end is the stream's
        environ.pop("CONTENT_LENGTH", None)
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    return Request(environ)


def parse(handler: str, route: str, body, **builder) -> dict:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HANDLERS[handler].parse(http(data, content_type="application/json", **builder), route, {})


def bad_request(handler: str, route: str, body, **builder) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse(handler, route, body, **builder)
    return info.value


# the body ceiling ---------------------------------------------------------------------------------------------

def test_a_declared_length_over_the_limit_is_refused_unread():
    request = http(b"x" * 101)
    with pytest.raises(PayloadTooLarge) as info:
        read_body(request, 100)
    assert request.environ["wsgi.input"].tell() == 0  # not a byte read
    assert (info.value.status, info.value.param) == (413, "body")
    assert info.value.message == "the request body is over this route's limit of 100 bytes"


@pytest.mark.parametrize("size, limit, accepted", [(100, 100, True), (101, 100, False), (0, 100, True)])
def test_a_chunked_body_is_read_up_to_the_limit_and_no_further(size, limit, accepted):
    request = http(b"y" * size, chunked=True)
    if not accepted:
        with pytest.raises(PayloadTooLarge):
            read_body(request, limit)
        assert request.environ["wsgi.input"].tell() == limit + 1  # one byte past the limit tells
        return
    read_body(request, limit)
    assert request.get_data() == b"y" * size and request.environ["CONTENT_LENGTH"] == str(size)
    assert "HTTP_TRANSFER_ENCODING" not in request.environ


def test_a_body_shorter_than_declared_is_what_arrived():
    request = http(b"{}")
    request.environ["CONTENT_LENGTH"] = "50"  # the client hung up early
    read_body(request, 100)
    assert request.get_data() == b"{}" and request.environ["CONTENT_LENGTH"] == "2"


@pytest.mark.parametrize("limit, said", [(8 * 2**20, "8 MiB"), (512 * 2**10, "512 KiB"), (1536, "1.5 KiB"),
                                         (3 * 2**19, "1.5 MiB"), (1023, "1023 bytes")])
def test_the_limit_is_said_in_human_units(limit, said):
    request = http(b"z")
    request.environ["CONTENT_LENGTH"] = str(limit + 1)  # refused by what it declares
    with pytest.raises(PayloadTooLarge) as info:
        read_body(request, limit)
    assert info.value.message.endswith(f"limit of {said}")


# JSON, and what the bus cannot carry ------------------------------------------------------------------------

def test_an_empty_body_and_the_query():
    parsed = parse("json", "my_route", b"", query_string={"a": "1"})
    assert (parsed["body"], parsed["query"], "model" in parsed) == (None, {"a": "1"}, False)


@pytest.mark.parametrize("raw, message", [(b"{'single': 1}", "not valid JSON"), (b"[1, 2", "not valid JSON"),
                                          (b"[" * 100_000, "nested too deeply")])
def test_bodies_that_are_no_json(raw, message):
    error = bad_request("json", "my_route", raw)
    assert error.code == "invalid_json" and message in error.message


@pytest.mark.parametrize("raw, param, why", [
    (b'{"messages": [{"content": "\\ud800"}]}', "messages.0.content", "unpaired surrogate"),
    (b'{"a": {"\\udfff": 1}}', "a.\\udfff", "a key with an unpaired surrogate"),
    (b'{"n": 18446744073709551616}', "n", "outside -2^63 to 2^64-1"),
    (b'[-9223372036854775809]', "0", "outside"),
    (b'"\\ud83d"', "body", "unpaired surrogate"),
])
def test_what_the_bus_cannot_carry_is_a_400_naming_the_field(raw, param, why):
    error = bad_request("json", "my_route", raw)
    assert (error.code, error.param) == ("invalid_value", param) and why in error.message


def test_a_paired_surrogate_and_the_largest_integers_travel():
    raw = b'{"e": "\\ud83d\\ude00", "big": 18446744073709551615, "low": -9223372036854775808}'
    parsed = parse("json", "my_route", raw)
    assert parsed["body"] == {"e": "\U0001f600", "big": 2**64 - 1, "low": -2**63}


def test_only_a_string_model_is_taken_for_the_allow_list():
    assert parse("json", "my_route", {"model": "m1"})["model"] == "m1"
    assert "model" not in parse("json", "my_route", {"model": ["m1"]})


# OpenAI's validation --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("route, body, code, param", [
    ("chat", {"model": "m"}, "missing_required_parameter", "messages"),
    ("chat", {"model": "m", "messages": []}, "invalid_value", "messages"),
    ("chat", {**CHAT, "max_tokens": "5"}, "invalid_value", "max_tokens"),  # strict: the body goes on as sent
    ("chat", {**CHAT, "max_tokens": 0}, "invalid_value", "max_tokens"),
    ("chat", {**CHAT, "temperature": 2.5}, "invalid_value", "temperature"),
    ("chat", {**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "invalid_value", "stop"),
    ("chat", {**CHAT, "messages": [{"role": "robot", "content": "x"}]}, "invalid_value", "messages.0.role"),
    ("chat", {**CHAT, "model": "a\x00b"}, "invalid_value", "model"),
    ("chat", {**CHAT, "stream": "yes"}, "invalid_value", "stream"),
    ("completions", {"model": "m", "prompt": ""}, "invalid_value", "prompt"),
    ("embeddings", {"model": "m", "input": []}, "invalid_value", "input"),
    ("embeddings", {"model": "m", "input": ["ok", ""]}, "invalid_value", "input"),
    ("embeddings", {"model": "m", "input": "x", "encoding_format": "hex"}, "invalid_value", "encoding_format"),
])
def test_openai_bodies_are_checked_as_openai_checks(route, body, code, param):
    error = bad_request("openai", route, body)
    assert (error.code, error.param) == (code, param) and error.message.startswith(f"'{param}': ")


def test_a_body_that_is_not_an_object():
    assert bad_request("openai", "chat", [CHAT]).code == "invalid_request_body"


def test_the_body_goes_on_as_sent_unknown_fields_too():
    body = {**CHAT, "temperature": 1, "vendor_option": {"x": [1]}}
    parsed = parse("openai", "chat", body)
    assert parsed["body"] == body and parsed["model"] == "m"
    assert parse("openai", "openai_models", b"")["body"] is None  # a route with no body schema


def envelope_of(parsed: dict, **fields) -> dict:
    return {**new_envelope("chat", parsed), **fields}


def test_the_end_of_a_stream_with_and_without_usage():
    handler = HANDLERS["openai"]
    plain = parse("openai", "chat", {**CHAT, "stream": True})
    assert handler.wants_stream(plain) and handler.render_end(envelope_of(plain)) == b"data: [DONE]\n\n"
    asked = parse("openai", "completions", {"model": "m", "prompt": "p", "stream": True,
                                            "stream_options": {"include_usage": True}})
    end = handler.render_end(envelope_of(asked, id="req_9", usage={"prompt_tokens": 1, "total_tokens": 3}))
    usage_line, done = end.split(b"\n\n")[:2]
    tail = json.loads(usage_line.removeprefix(b"data: "))
    assert tail == {"id": "req_9", "object": "text_completion", "model": "m", "created": 0, "choices": [],
                    "usage": {"prompt_tokens": 1, "total_tokens": 3}}
    assert done == b"data: [DONE]" and not handler.wants_stream(parse("openai", "chat", CHAT))


# the native handler -------------------------------------------------------------------------------------------

def test_a_nul_character_is_refused_where_it_hides():
    error = bad_request("native", "plugins_create", {"name": "p", "kind": "deny_list",
                                                     "config": {"words": ["ok", "b\x00d"]}})
    assert (error.code, error.param) == ("invalid_body", "config.words.1")


def test_a_native_body_error_says_how_many_more():
    error = bad_request("native", "keys_create", {"name": "", "role": "boss", "extra": 1})
    assert error.code == "invalid_body" and error.param == "name" and "(and 2 more)" in error.message


def test_native_bodies_come_validated_with_their_defaults():
    parsed = parse("native", "keys_create", {"name": "ci", "expires_at": "2030-01-01T02:00:00+02:00"})
    assert parsed["body"]["role"] == "member" and parsed["body"]["models"] is None
    assert parsed["body"]["expires_at"].startswith("2030-01-01T00:00:00")  # stored as UTC


def test_a_multipart_upload_is_read_as_its_json_body():
    data = {"file": (io.BytesIO(b"hello"), "a.txt", "text/plain"), "metadata": '{"k": 1}'}
    request = http(data=data)
    body = HANDLERS["native"].parse(request, "my_upload", {})["body"]
    assert body == {"content_base64": "aGVsbG8=", "name": "a.txt", "content_type": "text/plain", "metadata": {"k": 1}}


@pytest.mark.parametrize("data, param", [({"name": "x"}, "file"),
                                         ({"file": (io.BytesIO(b"x"), "a.txt"), "metadata": "{no"}, "metadata")])
def test_bad_multipart_uploads(data, param):
    with pytest.raises(BadRequest) as info:
        HANDLERS["native"].parse(http(data=data, content_type="multipart/form-data"), "my_upload", {})
    assert info.value.param == param


# errors in OpenAI's shape -----------------------------------------------------------------------------------

@pytest.mark.parametrize("exc, kind", [
    (Unauthorized("x"), "authentication_error"), (Forbidden("x"), "permission_error"),
    (NotFound("x"), "invalid_request_error"), (PayloadTooLarge("x"), "invalid_request_error"),
    (StepError("x"), "server_error"), (UpstreamError("x"), "api_error"), (Unavailable("x"), "api_error"),
    (StepTimeout("x"), "timeout")])
def test_every_status_has_openai_s_error_type(exc, kind):
    assert error_body(exc)["error"]["type"] == kind


def test_an_error_answer_carries_its_code_param_and_retry_after():
    response = error_response(BadRequest("no", code="bad_thing", param="messages"), {"x-request-id": "r1"})
    assert response.status_code == 400 and "Retry-After" not in response.headers
    assert response.headers["x-request-id"] == "r1" and response.mimetype == "application/json"
    assert json.loads(response.get_data()) == {"error": {"message": "no", "type": "invalid_request_error",
                                                         "param": "messages", "code": "bad_thing"}}
    assert error_response(Unavailable("later", details={"retry_after": 2})).headers["Retry-After"] == "2"
