"""A real nginx in front of replicas on loopback ports, with the proxy settings that
docker compose ships (``deploy/nginx/proxy.conf``): what clients of a scaled-out
service talk to."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx

from tests.service.servers import REPO, free_port, wait_for

PROXY_CONF = REPO / "deploy" / "nginx" / "proxy.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_available() -> bool:
    return Path(NGINX).exists()


class NginxProcess:
    def __init__(self, directory: Path, upstream_ports: list[int]) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream_ports = upstream_ports
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        d = self.dir
        servers = "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in self.upstream_ports
        )
        temps = "\n".join(
            f"    {kind}_temp_path {d}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""
daemon off;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temps}
    upstream onlinenorm_api {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        include {PROXY_CONF};
    }}
}}
"""

    def start(self) -> NginxProcess:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(self._config())
        subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(self.dir)], check=True, capture_output=True)
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200, 30, "nginx")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
