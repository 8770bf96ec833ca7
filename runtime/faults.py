"""Fault injection for tests and drills: a TCP proxy in front of a store that can be cut and restored.

Put it between a graph and PostgreSQL (or Redis) and the graph sees the store go away exactly as it does when the
server dies: new connections are refused and the open ones are reset, while the real server, which others may
share, keeps running.
"""
from __future__ import annotations

import queue
import selectors
import socket
import struct
import threading

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


def _bound(host: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target` (host, port); `.cut()`, `.restore()`, `.close()`.

    One thread runs every socket through a selector, so a cut happens in the thread that owns the sockets (a
    socket closed from another thread does not wake a blocked recv on Linux).
    """

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0):
        self.target = target
        self.host = host
        self._selector = selectors.DefaultSelector()
        self._peer: dict[socket.socket, socket.socket] = {}
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._listener: socket.socket | None = None
        self._holder: socket.socket | None = None
        self._listen(port)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._loop, name=f"tcp-proxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now."""
        return len(self._peer) // 2

    def cut(self) -> None:
        """Refuse new connections (ECONNREFUSED, as from a stopped server) and reset the open ones."""
        self._call("cut")

    def restore(self) -> None:
        """Accept and forward again, on the same port."""
        self._call("restore")

    def close(self) -> None:
        """Stop for good: everything is closed and the thread ends."""
        if self._thread.is_alive():
            self._call("close")
            self._thread.join(5)

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # the proxy's thread -------------------------------------------------------------------------------------
    def _call(self, command: str) -> None:
        done = threading.Event()
        self._commands.put((command, done))
        self._wake_w.send(b"x")
        if not done.wait(10):
            raise TimeoutError(f"TcpProxy did not {command} in 10 s")

    def _listen(self, port: int) -> None:
        self._listener = _bound(self.host, port)
        self._listener.listen(128)
        self._selector.register(self._listener, selectors.EVENT_READ)

    def _loop(self) -> None:
        while True:
            for key, _ in self._selector.select():
                sock = key.fileobj
                if sock is self._wake_r:
                    sock.recv(4096)
                    while not self._commands.empty():
                        command, done = self._commands.get()
                        running = self._apply(command)
                        done.set()
                        if not running:
                            return
                elif sock is self._listener:
                    self._accept()
                elif sock in self._peer:
                    self._forward(sock)

    def _apply(self, command: str) -> bool:
        """Run a command in the proxy's thread; False once closed."""
        if command == "cut":
            if self._listener is not None:
                self._unlisten()
                # bound but not listening: connections are refused, and the port stays ours for restore()
                self._holder = _bound(self.host, self.port)
            for sock in list(self._peer):
                self._drop(sock, reset=True)
        elif command == "restore":
            if self._listener is None:
                self._listen(self.port)
            self._release_holder()
        elif command == "close":
            if self._listener is not None:
                self._unlisten()
            self._release_holder()
            for sock in list(self._peer):
                self._drop(sock, reset=True)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
            return False
        return True

    def _unlisten(self) -> None:
        self._selector.unregister(self._listener)
        self._listener.close()
        self._listener = None

    def _release_holder(self) -> None:
        if self._holder is not None:
            self._holder.close()
            self._holder = None

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)  # the store itself is down: say so the same way
            return
        for a, b in ((client, upstream), (upstream, client)):
            a.settimeout(None)
            self._peer[a] = b
            self._selector.register(a, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
            if data:
                self._peer[sock].sendall(data)
                return
        except OSError:
            pass
        self._drop(sock, reset=False)

    def _drop(self, sock: socket.socket, reset: bool) -> None:
        """Close a connection's two sockets: reset (a cut) or an orderly close (one side closed)."""
        peer = self._peer.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._peer.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            if reset:
                _reset(s)
            else:
                s.close()
