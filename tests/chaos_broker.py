"""A RabbitMQ node of the test's own (its own name, port and data folder), so a chaos test can stop, restart and
kill the broker without taking the shared one from every other test."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from scaigrid.runtime.testing import free_port


class PrivateBroker:
    """`rabbitmq-server` on 127.0.0.1:<free port>, node `sg-chaos-<id>@localhost`; `uri` for SCAIGRID_AMQP_URI."""

    def __init__(self):
        self.port = free_port()
        self.node = f"sg-chaos-{uuid.uuid4().hex[:8]}@localhost"
        self.folder = Path(tempfile.mkdtemp(prefix="sg-rabbit-"))
        (self.folder / "plugins").write_text("[].\n")  # no management plugin: its port would clash
        (self.folder / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        shutil.chown(self.folder, "rabbitmq", "rabbitmq")  # the server drops to the rabbitmq user
        for f in self.folder.iterdir():
            shutil.chown(f, "rabbitmq", "rabbitmq")
        self.env = {**os.environ, "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(free_port()), "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
                    "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"), "RABBITMQ_LOG_BASE": str(self.folder / "log"),
                    "RABBITMQ_PID_FILE": str(self.folder / "pid"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "plugins")}
        self.uri = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.start()

    def ctl(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(["rabbitmqctl", "-q", "-n", self.node, *args], check=True, capture_output=True,
                       timeout=timeout, env=self.env)

    def start(self) -> None:
        """Start the node (again) and wait until it takes connections."""
        subprocess.run(["rabbitmq-server", "-detached"], check=True, capture_output=True, timeout=60, env=self.env,
                       cwd=self.folder)
        deadline = time.monotonic() + 90
        while True:
            try:
                self.ctl("await_startup", "--timeout", "10", timeout=30)
                return
            except subprocess.CalledProcessError:  # the node's name is not registered with epmd yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")

    def stop(self) -> None:
        """The whole node down (its queues and persistent messages stay on disk for the next start)."""
        self.ctl("stop")

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.SubprocessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)
