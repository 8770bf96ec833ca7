"""The plugins function alone (nameko's worker_factory) on the real PluginRepository (PostgreSQL, Redis fan-out) with
the built-in kinds: a tenant's chain in order before the model, after it and per streamed chunk, refusals, config
errors that name the field, and tenant scoping of the operations."""
import pytest
from cachetools import TTLCache
from nameko.testing.services import worker_factory

from scaigrid.adapters.cache.health import health_for
from scaigrid.adapters.sql.engine import sessions_for
from scaigrid.adapters.sql.plugin_store import PluginRepository
from scaigrid.functions.plugins.service import Plugins
from scaigrid.runtime.errors import BadRequest, NotFound, PolicyRefusal


@pytest.fixture
def plugins(pg_url, redis_url, redis_client):
    store = PluginRepository(sessions_for(pg_url), redis_client, 30, health=health_for(redis_url))
    return worker_factory(Plugins, store=store, parsed=TTLCache(100, 600))


@pytest.fixture
def owner(caller):
    return caller("tenant-admin")


@pytest.fixture
def add(plugins, envelope, owner):
    """add(kind, config, position=100, principal=owner) -> the stored plugin."""
    def make(kind: str, config: dict, position: int = 100, principal=None, **fields):
        body = {"name": kind, "kind": kind, "config": config, "position": position, **fields}
        return plugins.create(envelope("plugins_create", principal or owner, body=body))["response"]
    return make


@pytest.fixture
def chat(envelope, owner):
    def make(*messages, principal=None, **body):
        return envelope("chat", principal or owner, body={"model": "m", "messages": list(messages), **body})
    return make


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def answer_of(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def test_no_tenant_or_no_plugins_changes_nothing(plugins, chat, envelope):
    anonymous = envelope("chat", body={"model": "m", "messages": [user("hi")]})
    assert plugins.before(anonymous)["request"]["body"] == {"model": "m", "messages": [user("hi")]}
    env = chat(user("hi"), max_tokens=5)
    assert plugins.before(env)["request"]["body"] == {"model": "m", "messages": [user("hi")], "max_tokens": 5}


def test_the_chain_runs_in_position_order(plugins, add, chat):
    add("max_tokens_clamp", {"max_tokens": 50}, position=20)
    add("system_prompt", {"content": "tenant {tenant_id}"}, position=10)
    env = plugins.before(chat(user("hi"), max_tokens=500, max_completion_tokens=80))
    body = env["request"]["body"]
    assert body["messages"] == [{"role": "system", "content": f"tenant {env['tenant']}"}, user("hi")]
    assert body["max_tokens"] == 50 and "max_completion_tokens" not in body


def test_clamp_keeps_a_smaller_ask_and_sets_a_missing_one(plugins, add, chat):
    add("max_tokens_clamp", {"max_tokens": 50})
    assert plugins.before(chat(user("a"), max_completion_tokens=20))["request"]["body"]["max_tokens"] == 20
    assert plugins.before(chat(user("a")))["request"]["body"]["max_tokens"] == 50


def test_system_prompt_replace_drops_the_caller_s_own(plugins, add, chat):
    add("system_prompt", {"content": "ours", "mode": "replace"})
    body = plugins.before(chat({"role": "system", "content": "theirs"}, user("q")))["request"]["body"]
    assert body["messages"] == [{"role": "system", "content": "ours"}, user("q")]


def test_deny_list_refuses_whole_words_only(plugins, add, chat):
    add("deny_list", {"words": ["secret"], "message": "not here"})
    with pytest.raises(PolicyRefusal) as info:
        plugins.before(chat(user("tell me the SECRET")))
    assert (info.value.status, info.value.message) == (400, "not here")
    assert plugins.before(chat(user("secretary")))["request"]["body"]["messages"] == [user("secretary")]


def test_a_disabled_plugin_stops_applying_at_once(plugins, add, chat, envelope, owner):
    plugin = add("deny_list", {"words": ["nope"]})
    with pytest.raises(PolicyRefusal):
        plugins.before(chat(user("nope")))
    plugins.update(envelope("plugins_update", owner, body={"enabled": False}, path={"plugin_id": plugin["id"]}))
    assert plugins.before(chat(user("nope")))["request"]["body"]["messages"] == [user("nope")]


def test_reversible_redaction_hides_pii_from_the_model_and_restores_it(plugins, add, chat):
    add("pii_redaction", {"reversible": True, "entities": ["email"]})
    env = plugins.before(chat(user("write to ann@example.com")))
    assert env["request"]["body"]["messages"] == [user("write to [EMAIL_1]")]
    env["response"] = answer_of("Sure, I wrote to [EMAIL_1] and bob@example.org.")
    text = plugins.after(env)["response"]["choices"][0]["message"]["content"]
    assert text == "Sure, I wrote to ann@example.com and [EMAIL_2]."  # the answer's own PII stays hidden


def test_after_scrubs_answers_but_leaves_streamed_ones_to_the_chunks(plugins, add, chat):
    add("deny_list", {"words": ["darn"], "check": ["answer"]})
    env = plugins.before(chat(user("darn")))  # check: answer only, so the request passes
    env["response"] = answer_of("darn it")
    assert plugins.after(env)["response"]["choices"][0]["message"]["content"] == "[removed] it"
    streamed = chat(user("x"))
    streamed["context"]["stream"], streamed["response"] = True, answer_of("darn")
    assert plugins.after(streamed)["response"] == answer_of("darn")


def chunk(env: dict, text: str | None, final: bool = False) -> dict:
    data = None if text is None else {"choices": [{"index": 0, "delta": {"content": text}}]}
    return {"id": env["id"], "tenant": env["tenant"], "context": env["context"], "data": data, "final": final}


def emitted(out: dict) -> list:
    return [c["choices"][0]["delta"].get("content") if c.get("choices") else c for c in out["emit"]]


def test_chunks_pass_through_without_chunk_plugins(plugins, add, chat):
    add("system_prompt", {"content": "before only"})  # a kind with no chunk phase
    env = chat(user("x"))
    assert emitted(plugins.on_chunk(chunk(env, "piece"))) == ["piece"]
    assert plugins.on_chunk(chunk(env, None, final=True))["emit"] == []


def test_streamed_pii_is_held_back_until_it_is_whole(plugins, add, chat):
    add("pii_redaction", {"entities": ["email"], "hold_chars": 16})
    env = chat(user("x"))
    out = [emitted(plugins.on_chunk(chunk(env, piece))) for piece in ("mail me at ann@exa", "mple.com today")]
    out.append(emitted(plugins.on_chunk(chunk(env, None, final=True))))
    text = "".join(t for pieces in out for t in pieces)
    assert text == "mail me at [EMAIL_1] today" and "ann@" not in "".join(out[0])


def test_a_chunk_without_text_is_passed_on(plugins, add, chat):
    add("deny_list", {"words": ["x"], "check": ["answer"]})
    role_only = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    out = plugins.on_chunk({**chunk(chat(user("y")), None), "data": role_only})
    assert out["emit"] == [role_only]


def test_unknown_kinds_and_bad_configs_name_the_field(add):
    with pytest.raises(BadRequest) as info:
        add("no_such_kind", {})
    assert info.value.code == "unknown_plugin_kind" and "deny_list" in info.value.message
    with pytest.raises(BadRequest) as info:
        add("max_tokens_clamp", {"max_tokens": 0})
    assert (info.value.code, info.value.param) == ("invalid_plugin_config", "config.max_tokens")
    with pytest.raises(BadRequest) as info:
        add("deny_list", {"patterns": ["(unclosed"]})
    assert info.value.param == "config.patterns"


def test_one_tenant_s_plugins_never_touch_another(plugins, add, chat, caller, envelope, owner):
    plugin = add("deny_list", {"words": ["mine"]})
    stranger = caller("tenant-admin")
    assert plugins.before(chat(user("mine"), principal=stranger))["request"]["body"]["messages"] == [user("mine")]
    with pytest.raises(NotFound) as info:
        plugins.delete(envelope("plugins_delete", stranger, path={"plugin_id": plugin["id"]}))
    assert info.value.code == "plugin_not_found"
    with pytest.raises(NotFound):  # nor put one into its chain
        add("deny_list", {"words": ["x"]}, principal=stranger, tenant_id=owner["tenant_id"])
    listed = plugins.list(envelope("plugins_list", owner))["response"]["data"]
    assert [p["id"] for p in listed] == [plugin["id"]]


def test_kinds_lists_every_built_in_with_its_schema(plugins, envelope, owner):
    data = plugins.kinds(envelope("plugin_kinds", owner))["response"]["data"]
    by_kind = {k["kind"]: k for k in data}
    assert {"deny_list", "max_tokens_clamp", "pii_redaction", "system_prompt", "webhook"} <= set(by_kind)
    assert by_kind["max_tokens_clamp"]["phases"] == ["before"]
    assert "max_tokens" in by_kind["max_tokens_clamp"]["config_schema"]["properties"]
