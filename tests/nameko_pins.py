"""The nameko private APIs runtime/nameko_compat.py wraps, each pinned on a real container. Run by
tests/test_nameko_compat.py, one pin per process: nameko needs eventlet's monkey patch, which the test process
(pytest's capture) does not have. `python tests/nameko_pins.py NAME` exits 0 when the pin holds."""
import eventlet

eventlet.monkey_patch()

import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402
from nameko.containers import ContainerBeingKilled, ServiceContainer  # noqa: E402
from nameko.extensions import DependencyProvider  # noqa: E402
from nameko.rpc import ReplyListener, rpc  # noqa: E402
from nameko.web.handlers import http  # noqa: E402
from nameko.web.server import WebServer  # noqa: E402

from scaigrid.runtime import nameko_compat  # noqa: E402
from scaigrid.runtime.web import http as in_place_http  # noqa: E402
from scaigrid.runtime.testing import Vhost, free_port  # noqa: E402


class Recorder(DependencyProvider):
    """Records the worker lifecycle around each call, and the greenthread it ran in."""

    def setup(self):
        self.seen = []

    def worker_setup(self, worker_ctx):
        self.seen.append(("setup", eventlet.getcurrent()))

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        self.seen.append(("result", result))

    def get_dependency(self, worker_ctx):
        return self.seen


class Tiny:
    name = "tiny"
    seen = Recorder()

    @rpc
    def double(self, x):
        return 2 * x

    @rpc
    def fails(self):
        raise ValueError("no")

    @rpc
    def slow(self, seconds):
        eventlet.sleep(seconds)
        return "done"

    @http("GET", "/ping")
    def ping(self, request):
        return "pong"

    @in_place_http("GET", "/in-place")
    def in_place(self, request):
        return f"{len(CONTAINERS[0]._worker_threads)} spawned"

    @in_place_http("GET", "/no-delay")
    def no_delay(self, request):
        connection = request.environ["eventlet.input"]._sock  # the accepted socket, as eventlet's wsgi keeps it
        return str(connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    @in_place_http("GET", "/in-place-fails")
    def in_place_fails(self, request):
        raise ValueError("no")


CONTAINERS: list = []


def started(vhost: Vhost) -> ServiceContainer:
    port = free_port()
    container = ServiceContainer(Tiny, {"AMQP_URI": vhost.uri, "WEB_SERVER_ADDRESS": f"127.0.0.1:{port}"})
    container.start()
    container.port = port
    CONTAINERS.append(container)
    return container


def _entrypoint(container, name):
    return next(e for e in container.entrypoints if e.method_name == name)


def pin_run_worker_runs_the_method_in_the_calling_greenthread_with_the_lifecycle(tiny):
    recorder = next(d for d in tiny.dependencies if isinstance(d, Recorder))
    assert nameko_compat.run_worker(tiny, _entrypoint(tiny, "double"), (21,)) == 42
    assert recorder.seen == [("setup", eventlet.getcurrent()), ("result", 42)]
    try:
        nameko_compat.run_worker(tiny, _entrypoint(tiny, "fails"), ())
        raise AssertionError("the method's error was not raised")
    except ValueError:
        pass
    assert recorder.seen[-1] == ("result", None)  # the providers saw the worker end before the error was raised


def pin_wait_for_workers_waits_for_a_spawned_worker(tiny):
    done = []
    tiny.spawn_worker(_entrypoint(tiny, "slow"), (0.3,), {},
                      handle_result=lambda ctx, result, exc_info: done.append(result) or (result, exc_info))
    began = time.monotonic()
    nameko_compat.wait_for_workers(tiny)
    assert done == ["done"] and time.monotonic() - began >= 0.25


def pin_stop_accepting_refuses_new_connections_and_keeps_open_ones(tiny):
    with httpx.Client(base_url=f"http://127.0.0.1:{tiny.port}") as kept:
        assert kept.get("/ping").text == "pong"  # a keep-alive connection, open before the stop
        server = next(e for e in tiny.subextensions if isinstance(e, WebServer))
        nameko_compat.stop_accepting(server)
        nameko_compat.stop_accepting(server)  # twice is harmless (a drain may be asked again)
        try:
            httpx.get(f"http://127.0.0.1:{tiny.port}/ping", timeout=2)
            raise AssertionError("a new connection was still accepted")
        except httpx.ConnectError:
            pass
        assert kept.get("/ping").text == "pong"


def pin_in_place_http_runs_the_worker_where_the_request_was_read(tiny):
    recorder = next(d for d in tiny.dependencies if isinstance(d, Recorder))
    with httpx.Client(base_url=f"http://127.0.0.1:{tiny.port}") as client:
        answer = client.get("/in-place")
        assert (answer.status_code, answer.text) == (200, "0 spawned"), answer.text  # no worker of the pool
        assert [kind for kind, _ in recorder.seen] == ["setup", "result"]  # the whole worker lifecycle ran
        assert client.get("/in-place-fails").status_code == 500  # nameko's own error answer
    tiny.kill()
    try:
        nameko_compat.refuse_if_killed(tiny)
        raise AssertionError("a killed container still took a worker")
    except ContainerBeingKilled:
        pass


def pin_install_turns_nagle_off_on_web_connections(tiny):
    with httpx.Client(base_url=f"http://127.0.0.1:{tiny.port}") as client:
        assert client.get("/no-delay").text == "0"  # nameko alone: Nagle's algorithm on
    nameko_compat.install()
    with httpx.Client(base_url=f"http://127.0.0.1:{tiny.port}") as client:
        assert client.get("/no-delay").text != "0"  # a new connection, after install: off


def pin_forget_reply_drops_the_reply_event(tiny):
    listener = ReplyListener()
    listener.container = tiny
    listener.setup()
    listener.get_reply_event("abc")
    assert "abc" in listener._reply_events
    nameko_compat.forget_reply(listener, "abc")
    nameko_compat.forget_reply(listener, "abc")  # a second forget (timeout after an unsent message) is fine
    assert "abc" not in listener._reply_events


if __name__ == "__main__":
    vhost = Vhost()
    container = started(vhost)
    try:
        globals()["pin_" + sys.argv[1]](container)
    finally:
        container.kill()
        vhost.delete()
    print("holds:", sys.argv[1])
