"""runtime/nameko_compat.py pinned: what it corrects in nameko (an ack on a connection the broker reset must not
raise: raised, it kills the container, every request in flight a 500), and each nameko private API it wraps, so a
nameko upgrade that changes one fails here first."""
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from kombu import Connection, Queue
from nameko.messaging import QueueConsumer

from scaigrid.runtime import nameko_compat
from scaigrid.runtime.testing import Vhost


@pytest.fixture
def delivered():
    """A real message from a real broker, its connection then reset under it."""
    vhost = Vhost()
    conn = Connection(vhost.uri)
    queue = Queue("compat", auto_delete=True)
    with conn.Producer() as producer:
        producer.publish({"x": 1}, routing_key="compat", declare=[queue])
    message = queue(conn.channel()).get(no_ack=False)
    sock = conn.connection.transport.sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.shutdown(socket.SHUT_RDWR)  # the socket's own error on the next write, as when the broker goes away
    yield message
    vhost.delete()


def test_nameko_alone_lets_the_socket_error_through(delivered):
    with pytest.raises(OSError):
        nameko_compat._ack(QueueConsumer(), delivered)


def test_the_corrected_ack_does_not_raise(delivered):
    nameko_compat.install()
    QueueConsumer().ack_message(delivered)  # no exception: the broker has the message back already


PINS = ["run_worker_runs_the_method_in_the_calling_greenthread_with_the_lifecycle",
        "wait_for_workers_waits_for_a_spawned_worker",
        "stop_accepting_refuses_new_connections_and_keeps_open_ones",
        "forget_reply_drops_the_reply_event",
        "in_place_http_runs_the_worker_where_the_request_was_read",
        "install_turns_nagle_off_on_web_connections"]


@pytest.mark.parametrize("pin", PINS)
def test_a_private_api_behaves_as_nameko_compat_relies_on(pin):
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("nameko_pins.py")), pin],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"holds: {pin}" in done.stdout, done.stdout + done.stderr
