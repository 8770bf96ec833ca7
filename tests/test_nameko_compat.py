"""What runtime/nameko_compat.py corrects in nameko, pinned: an ack on a connection the broker reset must not raise
(raised, it kills the container: every request in flight a 500)."""
import socket

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
