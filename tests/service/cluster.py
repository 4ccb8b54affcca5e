"""A real Redis Cluster for the tests: three masters (``redis-server --cluster-enabled
yes``) on free loopback ports, joined with ``redis-cli --cluster create``, nothing on
disk but their node files in a temporary directory, stopped by pid."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.service.servers import free_port, wait_for

_BUS_OFFSET = 10000  # each node's cluster bus listens on its port + 10000


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _node_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + _BUS_OFFSET < 65536 and _free(port + _BUS_OFFSET) and port not in ports:
            ports.append(port)
    return ports


def _reply(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(command)
        return s.recv(65536)


class RedisClusterProcess:
    """``masters`` redis-server nodes forming one cluster with every slot covered."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.dir = directory
        self.ports = _node_ports(masters)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> RedisClusterProcess:
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            cmd = [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000", "--appendonly", "no", "--save", "", "--daemonize", "no",
            ]  # fmt: skip
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            wait_for(lambda p=port: _reply(p, b"PING\r\n").startswith(b"+PONG"), 30, f"cluster node {port}")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for port in self.ports:
            wait_for(
                lambda p=port: b"cluster_state:ok" in _reply(p, b"CLUSTER INFO\r\n"),
                30,
                f"cluster state on {port}",
            )
        return self

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=30)
        self.procs = []
