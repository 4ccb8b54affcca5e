"""docker-compose.yml, its GPU override and the Dockerfile, checked without a Docker
engine: every path they name exists, every setting they pass is one the service's
``Settings`` class has (read from service/config.py with ``ast``, no import), and the
ports, health checks and start command agree with each other and with the service."""

from __future__ import annotations

import ast
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "Dockerfile"


@cache
def settings_env() -> dict[str, tuple[str, ...] | None]:
    """Env name -> allowed values (a ``Literal``'s choices) or None, for every field of
    ``service.config.Settings``: ``<env_prefix><FIELD>`` plus any ``validation_alias``."""
    tree = ast.parse((ROOT / "service" / "config.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    prefix = ""
    env: dict[str, tuple[str, ...] | None] = {}
    for node in cls.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "model_config":
            assert isinstance(node.value, ast.Call)
            prefix = next(ast.literal_eval(k.value) for k in node.value.keywords if k.arg == "env_prefix")
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        choices = None
        ann = node.annotation
        if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", "") == "Literal":
            choices = tuple(str(v) for v in ast.literal_eval(ann.slice))
        names = [prefix + node.target.id]
        if isinstance(node.value, ast.Call):
            for kw in node.value.keywords:
                if kw.arg == "validation_alias" and isinstance(kw.value, ast.Call):
                    names += [ast.literal_eval(a) for a in kw.value.args]
        for name in names:
            env[name] = choices
    assert prefix == "ONLINENORM_", "the service's env prefix changed"
    return env


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerfile_args() -> dict[str, str]:
    """``ARG`` names and their defaults."""
    return {a.partition("=")[0]: a.partition("=")[2] for i, a in dockerfile() if i == "ARG"}


def check_settings(env: dict[str, Any], where: str) -> None:
    known = settings_env()
    for name, value in env.items():
        if not name.startswith("ONLINENORM_") and name != "REDIS_URL":
            continue
        assert name in known, f"{where} sets {name}, which service/config.py's Settings does not have"
        choices = known[name]
        if choices is not None and "${" not in str(value):
            assert str(value) in choices, f"{where}: {name}={value!r} is not one of {choices}"


def test_settings_parser_sees_the_real_fields() -> None:
    env = settings_env()
    assert {"REDIS_URL", "ONLINENORM_HOST", "ONLINENORM_PORT", "ONLINENORM_KEY_PREFIX"} <= set(env)
    assert env["ONLINENORM_DEVICE"] == ("auto", "cpu", "cuda")
    with pytest.raises(AssertionError, match="does not have"):
        check_settings({"ONLINENORM_NO_SUCH_SETTING": "1"}, "a test")
    with pytest.raises(AssertionError, match="not one of"):
        check_settings({"ONLINENORM_DEVICE": "tpu"}, "a test")


def test_redis_service_persists_and_is_health_checked() -> None:
    compose = load(COMPOSE)
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    command = command if isinstance(command, list) else shlex.split(command)
    assert command[command.index("--appendonly") + 1] == "yes"
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data"
    assert volume in compose["volumes"], "the redis volume must be a named volume"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_api_service_builds_from_the_repo_and_waits_for_redis() -> None:
    api = load(COMPOSE)["services"]["api"]
    context = (COMPOSE.parent / api["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / api["build"]["dockerfile"]).is_file()
    for arg in api["build"].get("args", {}):
        assert arg in dockerfile_args(), (
            f"compose passes build arg {arg} that the Dockerfile does not declare"
        )
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    env = api["environment"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["ONLINENORM_HOST"] == "0.0.0.0"
    check_settings(env, "docker-compose.yml")


def test_ports_and_healthcheck_agree_with_the_service() -> None:
    services = load(COMPOSE)["services"]
    api, proxy = services["api"], services["proxy"]
    port = str(api["environment"]["ONLINENORM_PORT"])
    assert "ports" not in api, "replicas are reached through the proxy, not published one by one"
    assert [str(p) for p in api["expose"]] == [port]
    published = [str(p).rsplit(":", 1)[-1] for p in proxy["ports"]]
    assert published == [port]
    assert f"EXPOSE {port}" in [f"{i} {a}" for i, a in dockerfile()]
    probe = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in probe
    routes = "\n".join(p.read_text() for p in (ROOT / "service" / "api").rglob("*.py"))
    assert '"/readyz"' in routes, "the service has no /readyz route"


def test_the_proxy_runs_the_nginx_config_the_tests_run() -> None:
    """nginx in front of the replicas: its files exist, it listens where compose
    publishes, its upstream is the api service's port, and its proxy settings are the
    file tests/service/proxy.py puts in front of real replicas."""
    services = load(COMPOSE)["services"]
    proxy, api = services["proxy"], services["api"]
    assert proxy["image"].startswith("nginx:1.27")  # 1.27.3+: upstream servers re-resolved
    mounts = dict(v.split(":")[:2] for v in proxy["volumes"])
    for source in mounts:
        assert (ROOT / source).is_file(), f"the proxy mounts {source}, which is not in the repo"
    conf = (ROOT / "deploy/nginx/nginx.conf").read_text()
    port = str(api["environment"]["ONLINENORM_PORT"])
    assert f"server api:{port} resolve" in conf
    assert f"listen {port};" in conf
    assert f"include {mounts['./deploy/nginx/proxy.conf']};" in conf
    assert mounts["./deploy/nginx/nginx.conf"] == "/etc/nginx/nginx.conf"
    tests_proxy = (ROOT / "tests/service/proxy.py").read_text()
    assert '"deploy" / "nginx" / "proxy.conf"' in tests_proxy
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    assert api["deploy"]["replicas"] >= 2


def test_dockerfile_installs_the_project_and_runs_uvicorn() -> None:
    instructions = dockerfile()
    args = dockerfile_args()
    assert args["TORCH_SPEC"].startswith("torch==")
    assert "TORCH_INDEX_URL" in args
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert '"${TORCH_SPEC}"' in runs and "pip install ." in runs
    for instruction, arguments in instructions:
        if instruction == "COPY":
            *sources, _dest = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repo"
    cmd = next(a for i, a in instructions if i == "CMD")
    assert "uvicorn service.app:app" in cmd
    env = dockerfile_env()
    check_settings(env, "Dockerfile")
    for name in re.findall(r"\$(\w+)", cmd):
        assert name in env, f"CMD uses ${name}, which the Dockerfile does not set"
    app_module = ast.parse((ROOT / "service" / "app.py").read_text())
    assert any(
        isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "app" for t in n.targets)
        for n in app_module.body
    ), "service/app.py defines no module-level `app`"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data"} <= ignored
    copied = {a.split()[0] for i, a in dockerfile() if i == "COPY"}
    assert not copied & ignored, "the Dockerfile copies something .dockerignore leaves out"


def test_gpu_reservation_only_in_the_override() -> None:
    base_api = load(COMPOSE)["services"]["api"]
    reservations = base_api.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert "devices" not in reservations, "a GPU reservation in the base file stops CPU hosts from starting"
    override = load(GPU)["services"]
    assert set(override) <= set(load(COMPOSE)["services"])
    api = override["api"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    check_settings(api["environment"], "docker-compose.gpu.yml")
    assert api["environment"]["ONLINENORM_DEVICE"] == "cuda"
    assert set(api["build"]["args"]) <= set(dockerfile_args())
