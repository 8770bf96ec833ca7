"""POST /v1/responses, OpenAI's Responses API, driven with the official `openai` SDK's client.responses: graph.yaml
as shipped with its local model and an upstream (llama-cpp-python's server), streamed and not; stored responses
per tenant (previous_response_id, GET, DELETE, store: false); the same budget, guardrails and ledger as chat."""
import httpx
import openai
import pytest

from surfaces import ASK, LOCAL, UPSTREAM, ask_with, deny_list, ledger_row, spent_key


@pytest.fixture(scope="module")
def stack(surfaces):
    return surfaces


def other_tenant_client(stack) -> openai.OpenAI:
    tenant = httpx.post(stack.base_url + "/api/v1/tenants", json={"name": "someone-else"}, headers=stack.admin)
    tenant = tenant.json() if tenant.status_code == 201 else next(
        t for t in httpx.get(stack.base_url + "/api/v1/tenants", headers=stack.admin).json()["data"]
        if t["name"] == "someone-else")
    key = httpx.post(f"{stack.base_url}/api/v1/tenants/{tenant['id']}/keys", json={"name": "k"},
                     headers=stack.admin).json()["key"]
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0)


@pytest.mark.parametrize("model", [LOCAL, UPSTREAM])
def test_a_response_answers_as_chat_does_with_exact_usage_and_one_ledger_row(stack, model):
    response = stack.openai.responses.create(model=model, input="Name three colours.", instructions="Be brief.",
                                             max_output_tokens=12, temperature=0)
    chat = stack.openai.chat.completions.create(model=model, max_tokens=12, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, *ASK])
    assert response.object == "response" and response.id.startswith("resp_") and response.model == model
    assert response.output_text == chat.choices[0].message.content != ""
    assert response.output[0].type == "message" and response.output[0].content[0].type == "output_text"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (chat.usage.prompt_tokens,
                                                                           chat.usage.completion_tokens)
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    expected = {"stop": "completed", "length": "incomplete"}[chat.choices[0].finish_reason]
    assert response.status == expected and response.instructions == "Be brief."
    row = ledger_row(stack, response._request_id)
    assert row is not None and row[:4] == ("responses", model, response.usage.input_tokens,
                                           response.usage.output_tokens)
    assert stack.openai.responses.retrieve(response.id).output_text == response.output_text


@pytest.mark.parametrize("model", [LOCAL, UPSTREAM])
def test_a_streamed_response_is_the_typed_events_and_is_stored_as_streamed(stack, model):
    events = list(stack.openai.responses.create(model=model, input=ASK, max_output_tokens=12, temperature=0,
                                                stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(kinds) > 9
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == text == events[-4].text != "" and final.usage.output_tokens > 0
    assert stack.openai.responses.retrieve(final.id).output_text == text  # kept before the last event went out
    with stack.openai.responses.stream(model=model, input=ASK, max_output_tokens=12, temperature=0) as stream:
        seen = list(stream)
        helper_text = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
        # the helper's final response is that of response.completed; one cut at max_output_tokens is incomplete
        assert seen[-1].response.output_text == helper_text
        if seen[-1].type == "response.completed":
            assert stream.get_final_response().output_text == helper_text
    if model == LOCAL:  # llama.cpp's server moves greedy picks a little when it reuses its prompt cache
        assert helper_text == text
        plain = stack.openai.responses.create(model=model, input=ASK, max_output_tokens=12, temperature=0)
        assert plain.output_text == text and plain.usage.input_tokens == final.usage.input_tokens


def test_previous_response_id_continues_the_conversation_of_the_tenant_only(stack):
    first = stack.openai.responses.create(model=LOCAL, input="My name is Ada.", max_output_tokens=8, temperature=0,
                                          instructions="Answer in one short sentence.")
    follow = stack.openai.responses.create(model=LOCAL, input="What is my name?", max_output_tokens=8,
                                           temperature=0, previous_response_id=first.id)
    alone = stack.openai.responses.create(model=LOCAL, input="What is my name?", max_output_tokens=8, temperature=0)
    # the history is prompted (and billed): the first turn, its answer, then the question
    assert follow.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    assert follow.previous_response_id == first.id and follow.instructions is None
    chat = stack.openai.chat.completions.create(model=LOCAL, max_tokens=8, temperature=0, messages=[
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"}])
    assert follow.output_text == chat.choices[0].message.content  # instructions do not carry over
    assert follow.usage.input_tokens == chat.usage.prompt_tokens
    stranger = other_tenant_client(stack)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.create(model=LOCAL, input="And mine?", previous_response_id=first.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.delete(first.id)
    assert stack.openai.responses.retrieve(first.id).id == first.id  # the stranger's delete did nothing


def test_a_nul_in_the_input_is_stored_and_given_back_exactly(stack):
    """PostgreSQL's text cannot hold U+0000: the fuzz test's one 500, when stored responses were JSONB."""
    response = stack.openai.responses.create(model=LOCAL, input="a\u0000b", max_output_tokens=2)
    follow = stack.openai.responses.create(model=LOCAL, input="and?", max_output_tokens=2,
                                           previous_response_id=response.id)
    assert stack.openai.responses.retrieve(response.id).output_text == response.output_text
    assert follow.usage.input_tokens > response.usage.input_tokens


def test_store_false_and_delete(stack):
    unstored = stack.openai.responses.create(model=LOCAL, input="Hi", max_output_tokens=4, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        stack.openai.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError):
        stack.openai.responses.create(model=LOCAL, input="Again", previous_response_id=unstored.id)
    kept = stack.openai.responses.create(model=LOCAL, input="Hi", max_output_tokens=4)
    stack.openai.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        stack.openai.responses.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError):
        stack.openai.responses.delete(kept.id)


def test_bad_input_is_a_400_naming_it_and_no_key_a_401(stack):
    url = stack.base_url + "/v1/responses"
    key = {"Authorization": f"Bearer {stack.key['key']}"}
    for bad, param in (({"input": ""}, "input"), ({"input": [{"role": "user", "content": [{"type": "input_image",
                                                                                           "image_url": "x"}]}]},
                                                                "input"),
                       ({"max_output_tokens": 0}, "max_output_tokens"), ({"tools": [{"type": "web_search"}]},
                                                                         "tools"),
                       ({"text": {"format": {"type": "json_schema"}}}, "text"),
                       ({"reasoning": {"effort": "high"}}, "reasoning"), ({"temperature": "hot"}, "temperature")):
        r = httpx.post(url, json={"model": LOCAL, "input": "hi", **bad}, headers=key)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["param"].startswith(param), r.json()
    assert httpx.post(url, json={"model": LOCAL, "input": "hi"}).status_code == 401
    assert httpx.get(url + "/resp_x").status_code == 401
    for odd in ("resp_x", "%00", "resp_" + "f" * 4000, "..%2F..%2Fetc"):  # not one of ours: 404, no query made
        assert httpx.get(f"{url}/{odd}", headers=key).status_code == 404
        assert httpx.delete(f"{url}/{odd}", headers=key).status_code == 404
    r = httpx.post(url, json={"model": LOCAL, "input": "hi", "previous_response_id": "resp_\u0000"}, headers=key)
    assert r.status_code == 404 and r.json()["error"]["param"] == "previous_response_id"
    r = httpx.post(url, json={"model": "no-such-model", "input": "hi"}, headers=key)
    assert r.status_code in (403, 404)
    models = {m.id: m.model_extra for m in stack.openai.models.list()}
    assert models[LOCAL]["responses"] == models[UPSTREAM]["responses"] == "translated"


def test_a_budget_that_stops_chat_stops_responses_and_back(stack):
    for first, then in (("chat", "responses"), ("responses", "chat")):
        key = spent_key(stack, first)
        for surface in (then, first):
            r = ask_with(stack, key, surface)
            assert r.status_code == 429 and r.json()["error"]["code"] == "daily_budget_exceeded", (first, surface)


def test_guardrails_apply_to_responses_in_and_out_and_the_stored_one_is_what_the_client_got(stack):
    with deny_list(stack, "no-secrets-responses", ["classified"]):
        for asked in ({"input": "Tell me the classified plan."}, {"input": "Hi", "instructions": "classified"}):
            with pytest.raises(openai.APIStatusError) as refused:
                stack.openai.responses.create(model=LOCAL, max_output_tokens=4, **asked)
            assert refused.value.status_code in (400, 403)
    said = stack.openai.responses.create(model=LOCAL, input=ASK, max_output_tokens=12, temperature=0).output_text
    word = max(said.split(), key=len).strip(".,:!")
    with deny_list(stack, "no-word-responses", [word]):
        plain = stack.openai.responses.create(model=LOCAL, input=ASK, max_output_tokens=12, temperature=0)
        events = list(stack.openai.responses.create(model=LOCAL, input=ASK, max_output_tokens=12, temperature=0,
                                                    stream=True))
    streamed = events[-1].response
    for response in (plain, streamed, stack.openai.responses.retrieve(streamed.id)):
        assert word not in response.output_text and "[removed]" in response.output_text, response.output_text


@pytest.mark.parametrize("path, body, text_mark", [
    ("/v1/responses", {"input": "Write a long story.", "max_output_tokens": 400}, "response.output_text.delta"),
    ("/v1/messages", {"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 400},
     "text_delta"),
])
def test_a_client_that_leaves_stops_the_generation_and_is_billed_for_what_was_made(stack, path, body, text_mark):
    with httpx.stream("POST", stack.base_url + path, timeout=120, headers={"x-api-key": stack.key["key"]},
                      json={"model": LOCAL, "temperature": 0, "stream": True, **body}) as r:
        rid, got = r.headers["x-request-id"], 0
        for line in r.iter_lines():
            got += line.startswith("data:") and text_mark in line
            if got == 5:
                break
    row = ledger_row(stack, rid, timeout=30)
    assert row is not None, "the stopped stream's usage never reached the ledger"
    assert 5 <= row[3] <= 15  # stopped within a few tokens, and billed for them, not for 400 nor for 0
    if path == "/v1/responses":  # it never finished: nothing was kept under its id
        with pytest.raises(openai.NotFoundError):
            stack.openai.responses.retrieve("resp_" + rid.removeprefix("req_"))
