"""One stack for the API surfaces' tests (tests/test_messages.py, tests/test_responses.py): graph.yaml as shipped,
its local models priced (a budget has something to count), plus an upstream model on llama-cpp-python's server;
a tenant with a member key, the official anthropic and openai SDKs pointed at it. The upstream serves tools."""
from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import psycopg2
import yaml

from conftest import bootstrap_key, launch
from llama_upstream import llama_server
from scaigrid.runtime.testing import SCAIGRID

REPO = Path(__file__).resolve().parents[1]
LOCAL, UPSTREAM = "smollm2-135m-instruct", "llama"
PRICE = {"prompt": 1000, "completion": 2000}  # micro-units per 1,000 tokens
ASK = [{"role": "user", "content": "Name three colours."}]


@contextlib.contextmanager
def surface_stack(database_url: str, tmp: Path) -> Iterator:
    subprocess.run([*SCAIGRID, "models", "prepare"], check=True, timeout=3600)
    with llama_server(tmp, chat_format="chatml-function-calling") as llama:  # tools too (tests/test_tool_calls.py)
        spec = yaml.safe_load((REPO / "graph.yaml").read_text())
        models = spec["functions"]["inference"]["config"]["models"]
        for model in models:
            model["price"] = PRICE
        models.append({"id": UPSTREAM, "kind": "chat", "backend": "openai", "price": PRICE,
                       "upstream": {"base_url": llama + "/v1", "model": "smollm2", "retries": 0, "timeout": 60}})
        (tmp / "graph.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        graph = launch(tmp / "graph.yaml", tmp, env={"SCAIGRID_DATABASE_URL": database_url})
        try:
            graph.database_url = database_url
            graph.admin = {"Authorization": f"Bearer {bootstrap_key(database_url)}"}
            graph.tenant = httpx.post(graph.base_url + "/api/v1/tenants", json={"name": "surfaces"},
                                      headers=graph.admin).json()
            graph.new_key = lambda name: httpx.post(f"{graph.base_url}/api/v1/tenants/{graph.tenant['id']}/keys",
                                                    json={"name": name}, headers=graph.admin).json()
            graph.key = graph.new_key("sdk")
            graph.client = anthropic.Anthropic(base_url=graph.base_url, api_key=graph.key["key"], max_retries=0,
                                               timeout=120)
            graph.openai = openai.OpenAI(base_url=graph.base_url + "/v1", api_key=graph.key["key"],
                                         max_retries=0, timeout=120)
            yield graph
        finally:
            graph.stop()


def ledger_row(stack, request_id: str, timeout: float = 15) -> tuple | None:
    """(route, model, prompt_tokens, completion_tokens, cost_micros, status) of a request, once it is written."""
    deadline = time.monotonic() + timeout
    with psycopg2.connect(stack.database_url) as conn, conn.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("SELECT route, model, prompt_tokens, completion_tokens, cost_micros, status FROM usage_ledger"
                        " WHERE request_id = %s", (request_id,))
            row = cur.fetchone()
            if row:
                return row
            conn.commit()
            time.sleep(0.2)
    return None


@contextlib.contextmanager
def deny_list(stack, name: str, words: list[str]) -> Iterator[dict]:
    """A deny-list guardrail on the stack's tenant, on requests and answers, for the length of a test."""
    plugin = httpx.post(stack.base_url + "/api/v1/plugins", headers=stack.admin, json={
        "name": name, "kind": "deny_list", "tenant_id": stack.tenant["id"],
        "config": {"words": words, "check": ["request", "answer"]}})
    assert plugin.status_code == 201, plugin.text
    try:
        yield plugin.json()
    finally:
        httpx.delete(f"{stack.base_url}/api/v1/plugins/{plugin.json()['id']}", headers=stack.admin)


SURFACES = {"chat": ("/v1/chat/completions", {"model": UPSTREAM, "max_tokens": 8, "messages": ASK}),
            "messages": ("/v1/messages", {"model": UPSTREAM, "max_tokens": 8, "messages": ASK}),
            "responses": ("/v1/responses", {"model": UPSTREAM, "max_output_tokens": 8, "input": "Hi"})}


def spent_key(stack, surface: str) -> dict:
    """A key whose daily budget (1 micro-unit) one request on `surface` used up: admitted while nothing was spent,
    it cost more; once its ledger row is in (reconciled), the spend stays past the budget for the day."""
    key = stack.new_key(f"budget-{surface}")
    assert httpx.put(f"{stack.base_url}/api/v1/keys/{key['id']}/limits", json={"daily_budget_micros": 1},
                     headers=stack.admin).status_code == 200
    path, body = SURFACES[surface]
    r = httpx.post(stack.base_url + path, json=body, headers={"Authorization": f"Bearer {key['key']}"}, timeout=60)
    assert r.status_code == 200, r.text
    assert ledger_row(stack, r.headers["x-request-id"]) is not None
    return key


def ask_with(stack, key: dict, surface: str) -> httpx.Response:
    path, body = SURFACES[surface]
    return httpx.post(stack.base_url + path, json=body, headers={"Authorization": f"Bearer {key['key']}"},
                      timeout=60)
