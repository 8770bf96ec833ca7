"""The two sides of bench/gateway.py and how each starts: the fake upstream's process, ScaiGrid (graph.yaml plus
one upstream model, a tenant member key) and LiteLLM's proxy (in a virtualenv of its own, installed once)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from scaigrid.runtime.testing import GraphProcess, bootstrap_key, free_port, throwaway_database
from soak import expect

HERE = Path(__file__).resolve().parent
GRAPH = HERE.parent / "graph.yaml"
LITELLM = "1.108.7"
LITELLM_VENV = Path.home() / ".cache" / "scaigrid" / "bench" / "litellm-venv"
MASTER_KEY = "sk-bench-master-key"
MODEL = "bench-upstream"


@dataclass
class Side:
    name: str
    base_url: str
    key: str | None
    model: str
    pid: int  # the root of its process tree
    log: Path | None = None
    errors: int = 0
    numbers: dict = field(default_factory=dict)

    def body(self, stream: bool) -> dict:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 32}
        return {**body, "stream": True, "stream_options": {"include_usage": True}} if stream else body

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode} before it answered")
        try:
            httpx.get(url, timeout=2)  # any answer: it listens
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise TimeoutError(f"{what} did not answer {url} in {timeout:.0f} s")


def start(stack: ExitStack, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A process in a session of its own (its workers too), stopped by its id: SIGTERM to its group, then KILL."""
    out = open(log, "w")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop() -> None:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        out.close()
    stack.callback(stop)
    return proc


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    r = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def install_litellm() -> str:
    """litellm[proxy]==LITELLM in its own virtualenv (once); the nearest version the index has if it lacks that."""
    if (have := litellm_version()) is not None:
        return have
    print(f"installing litellm[proxy]=={LITELLM} into {LITELLM_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", LITELLM_VENV], check=True)
    pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    if subprocess.run([*pip, f"litellm[proxy]=={LITELLM}"]).returncode != 0:
        index = subprocess.run([*pip[:3], "index", "versions", "litellm"], capture_output=True, text=True).stdout
        listed = index.partition("Available versions:")[2].split(",")
        wanted = tuple(int(x) for x in LITELLM.split("."))
        versions = [v.strip() for v in listed if v.strip().replace(".", "").isdigit()]
        nearest = min(versions, key=lambda v: [abs(a - b) for a, b in zip(map(int, v.split(".")), wanted)],
                      default=None)
        if nearest is None or subprocess.run([*pip, f"litellm[proxy]=={nearest}"]).returncode != 0:
            raise RuntimeError(f"pip could not install litellm[proxy]=={LITELLM} nor a near version ({nearest}): "
                               "run with --skip-litellm")
    return litellm_version() or "?"


def start_litellm(stack: ExitStack, upstream: str, tmp: Path) -> Side:
    version = install_litellm()
    config = {"model_list": [{"model_name": MODEL, "litellm_params": {
        "model": "openai/fake", "api_base": upstream, "api_key": "fake"}}],
        "general_settings": {"master_key": MASTER_KEY}, "litellm_settings": {"telemetry": False}}
    (tmp / "litellm.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if "DATABASE_URL" not in k}  # no database: none is named
    env.update(LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True", NO_DOCS="True")
    proc = start(stack, [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(tmp / "litellm.yaml"),
                         "--host", "127.0.0.1", "--port", str(port), "--num_workers", "2"],
                 tmp / "litellm.log", env)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, "litellm", 240)
    print(f"LiteLLM {version} on :{port}, 2 workers (log: {tmp / 'litellm.log'})", flush=True)
    return Side(f"LiteLLM {version}", f"http://127.0.0.1:{port}", MASTER_KEY, MODEL, proc.pid)


def start_receiver(stack: ExitStack, tmp: Path) -> str:
    """tests/otlp_receiver.py in a process of its own (decoding there, not in the GIL of this measuring one): the
    OTLP endpoint of the traced side."""
    port = free_port()
    proc = start(stack, [sys.executable, str(HERE.parent / "tests" / "otlp_receiver.py"), str(port)],
                 tmp / "otlp-receiver.log")
    wait_http(f"http://127.0.0.1:{port}/", proc, "the OTLP receiver", 30)
    return f"http://127.0.0.1:{port}"


def start_scaigrid(stack: ExitStack, upstream: str, tmp: Path, name: str = "ScaiGrid",
                   env: dict | None = None) -> Side:
    """graph.yaml as shipped plus the upstream model; a tenant and its member key made over the admin API. `env`:
    more environment for its processes (the traced side's OTEL_* variables)."""
    graph = yaml.safe_load(GRAPH.read_text())
    graph["functions"]["inference"]["config"]["models"].append(
        {"id": MODEL, "kind": "chat", "backend": "openai",
         "upstream": {"base_url": upstream, "model": "fake", "retries": 0, "timeout": 30}})
    (tmp / "graph.yaml").write_text(yaml.safe_dump(graph, sort_keys=False))
    url = stack.enter_context(throwaway_database("sg_bench_gateway"))
    admin_key = bootstrap_key(url)
    process = GraphProcess(tmp / "graph.yaml", tmp, env={"SCAIGRID_DATABASE_URL": url,
                                                         "SCAIGRID_LOG_LEVEL": "WARNING", **(env or {})})
    stack.callback(process.stop)
    process.wait_ready(timeout=300)
    with httpx.Client(base_url=process.base_url + "/api/v1", timeout=60,
                      headers={"Authorization": f"Bearer {admin_key}"}) as admin:
        tenant = expect(admin.post("/tenants", json={"name": "bench-gateway"}), 201)["id"]
        key = expect(admin.post(f"/tenants/{tenant}/keys", json={"name": "bench", "role": "member"}), 201)["key"]
    print(f"{name} graph.yaml on {process.base_url} (log: {process.log_path})", flush=True)
    return Side(name, process.base_url, key, MODEL, process.proc.pid, process.log_path)
