"""The ``onlinenorm`` CLI end to end: typer's CliRunner against the REAL service, and
``serve`` as a real subprocess."""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from clients import Client
from clients.cli import app
from tests.clients.conftest import ROOT, WRITE_KEY, LiveService, free_port

runner = CliRunner()


def run(live: LiveService, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    env = {"COLUMNS": "200", **(env or {})}
    result = runner.invoke(app, ["--url", live.url, "--api-key", WRITE_KEY, *args], env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    digits = load_digits()
    path = tmp_path_factory.mktemp("cli") / "digits.csv"
    rows = [",".join([*(f"p{i}" for i in range(64)), "label"])]
    rows += [
        ",".join([*(f"{v:g}" for v in x), str(y)])
        for x, y in zip(digits.data[:300], digits.target[:300], strict=True)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_console_script_points_at_the_cli() -> None:
    scripts = re.search(r"\[project\.scripts\]\s*\n(.*?)\n\s*\n", (ROOT / "pyproject.toml").read_text(), re.S)
    assert scripts is not None
    target = re.search(r'^onlinenorm\s*=\s*"([\w.]+):(\w+)"', scripts.group(1), re.M)
    assert target is not None
    assert callable(getattr(importlib.import_module(target.group(1)), target.group(2)))


def test_models_learn_predict_stats_metrics(
    live_service: LiveService, client: Client, model_name: str, digits_csv: Path
) -> None:
    code, out, err = run(
        live_service, "models", "create", "--name", model_name, "--task", "classification",
        "--input-shape", "64", "--num-classes", "10", "--norm", "online", "--hidden", "32",
    )  # fmt: skip
    assert code == 0, err
    assert f"created model {model_name}" in out
    assert client.get_model(model_name).spec["network"]["hidden"] == [32]

    code, out, _ = run(live_service, "models", "list")
    assert code == 0 and model_name in out

    code, out, _ = run(live_service, "models", "show", model_name)
    assert code == 0 and json.loads(out)["spec"]["num_classes"] == 10

    code, out, err = run(live_service, "learn", model_name, str(digits_csv), "--batch-size", "128")
    assert code == 0, err
    match = re.search(r"learned 300 samples .* prequential accuracy (\d\.\d+)", out)
    assert match is not None, out
    assert client.get_model(model_name).step == 300
    metrics = client.metrics(model_name)
    assert metrics.samples_seen == 300
    assert float(match.group(1)) == pytest.approx(metrics.accuracy, abs=1e-4)
    assert "samples/s" in err  # the progress bar

    code, out, err = run(live_service, "predict", model_name, str(digits_csv))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 300 and all(0 <= p["prediction"] <= 9 for p in lines)
    assert "accuracy" in err and "'label'" in err

    code, out, _ = run(live_service, "stats", model_name)
    assert code == 0
    assert "step 300" in out and "ls_rms" in out
    for layer in client.get_model(model_name).layers:
        assert layer in out

    code, out, _ = run(live_service, "stats", model_name, "--watch", "--count", "2", "--interval", "0.05")
    assert code == 0 and out.count("normalizer statistics") >= 1

    code, out, _ = run(live_service, "metrics", model_name)
    assert code == 0 and "samples_seen" in out and "300" in out
    code, out, _ = run(live_service, "metrics", model_name, "--json")
    assert json.loads(out)["samples_seen"] == 300

    code, out, _ = run(live_service, "models", "delete", model_name, "--yes")
    assert code == 0 and "deleted" in out
    code, _, err = run(live_service, "models", "show", model_name)
    assert code == 1 and "no model named" in err


def test_create_from_spec_file_with_flag_overrides(
    live_service: LiveService, client: Client, model_name: str, tmp_path: Path
) -> None:
    spec = {
        "name": "ignored",
        "task": "regression",
        "input_shape": [3],
        "norm": {"kind": "online", "alpha_fwd": 0.99},
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    code, _, err = run(live_service, "models", "create", str(path), "--name", model_name, "--norm", "layer")
    assert code == 0, err
    created = client.get_model(model_name).spec
    assert created["norm"]["kind"] == "layer" and created["norm"]["alpha_fwd"] == 0.99
    assert created["task"] == "regression"

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"x": [i, 1.0, -i], "y": 0.5 * i}) + "\n" for i in range(5)))
    code, out, err = run(live_service, "learn", model_name, str(data))
    assert code == 0, err
    assert "learned 5 samples" in out and "accuracy" not in out


def test_errors_exit_nonzero_with_the_servers_message(
    live_service: LiveService, model_name: str, tmp_path: Path
) -> None:
    code, _, err = run(live_service, "models", "create", "--name", model_name, "--task", "classification",
                       "--input-shape", "4")  # fmt: skip
    assert code == 1 and "num_classes" in err
    code, _, err = run(live_service, "models", "create", "--name", model_name, "--task", "regression",
                       "--input-shape", "4")  # fmt: skip
    assert code == 0, err
    narrow = tmp_path / "narrow.csv"
    narrow.write_text("1,2,3\n")
    code, _, err = run(live_service, "learn", model_name, str(narrow))
    assert code == 1 and "422" in err and "samples[0]" in err  # the server's message, brackets intact
    code, _, err = run(live_service, "learn", model_name, str(tmp_path / "missing.csv"))
    assert code == 2 and "no such file" in err
    code, _, err = run(live_service, "models", "create", "--name", model_name, "--norm", "batch")
    assert code == 2 and "--norm" in err
    result = runner.invoke(app, ["--url", f"http://127.0.0.1:{free_port()}", "models", "list"])
    assert result.exit_code == 1 and "cannot reach" in result.stderr
    result = runner.invoke(
        app, ["--url", live_service.url, "models", "list"], env={"ONLINENORM_API_KEY": "bad"}
    )
    assert result.exit_code == 1 and "401" in result.stderr


def test_api_key_from_the_environment(live_service: LiveService) -> None:
    result = runner.invoke(
        app, ["models", "list"], env={"ONLINENORM_URL": live_service.url, "ONLINENORM_API_KEY": WRITE_KEY}
    )
    assert result.exit_code == 0, result.stderr


def test_serve_starts_the_service_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    prefix = f"test-serve-{uuid.uuid4().hex[:12]}"
    redis_url = os.environ.get("REDIS_URL")
    args = [sys.executable, "-m", "clients.cli", "serve", "--port", str(port), "--key-prefix", prefix,
            "--data-dir", str(tmp_path / "data"), "--log-level", "warning"]  # fmt: skip
    if redis_url:
        args += ["--redis-url", redis_url]
    # No ONLINENORM_* or REDIS_URL in its environment: the flags decide.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONLINENORM_") and k != "REDIS_URL"}
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        with Client(f"http://127.0.0.1:{port}") as client:
            assert client.wait_until_ready(timeout=90).redis == "up"
            assert client.list_models() == []
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    where = redis_url or f"embedded Redis under {tmp_path / 'data'}"
    assert f"serving on http://127.0.0.1:{port} with {where}" in out
    if not redis_url:
        assert (tmp_path / "data").is_dir()


# ------------------------------------------------------------------ CLI manners
def _helps() -> list[list[str]]:
    return [
        ["--help"],
        *(
            [command, "--help"]
            for command in ("serve", "learn", "predict", "label", "stream", "stats", "metrics")
        ),
        *(["models", command, "--help"] for command in ("create", "list", "show", "delete")),
    ]


@pytest.mark.parametrize("args", _helps(), ids=lambda a: " ".join(a))
def test_help_shows_no_value_type_for_flags(args: list[str]) -> None:
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output, result.output


def test_stats_help_promises_only_what_the_table_shows(live_service: LiveService, model_name: str) -> None:
    help_text = runner.invoke(app, ["stats", "--help"], env={"COLUMNS": "200"}).output
    assert "drift" not in help_text
    code, _, err = run(live_service, "models", "create", "--name", model_name, "--task", "classification",
                       "--input-shape", "4", "--num-classes", "3", "--norm", "online")  # fmt: skip
    assert code == 0, err
    _, table, _ = run(live_service, "stats", model_name)
    for promised in ("mu", "std", "ls_rms", "samples"):
        assert promised in help_text and promised in table


def test_serve_on_a_taken_port_fails_at_once_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"REDIS_URL": "", "ONLINENORM_REDIS_URL": ""}
        started = time.perf_counter()
        result = runner.invoke(
            app, ["serve", "--port", str(port), "--data-dir", str(tmp_path / "data")], env=env
        )
        elapsed = time.perf_counter() - started
    assert result.exit_code == 2, result.output
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--port" in result.stderr
    assert not (tmp_path / "data").exists(), "the embedded Redis was started"
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_learn_piped_prints_plain_lines_with_the_whole_total(
    live_service: LiveService, model_name: str, digits_csv: Path
) -> None:
    code, _, err = run(live_service, "models", "create", "--name", model_name, "--task", "classification",
                       "--input-shape", "64", "--num-classes", "10")  # fmt: skip
    assert code == 0, err
    code, _, err = run(live_service, "learn", model_name, str(digits_csv), "--batch-size", "50",
                       env={"COLUMNS": "40"})  # fmt: skip
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) >= 3, err
    for line in lines:  # never a bar cut to the pipe's width, never figures before a result
        assert re.fullmatch(
            rf"learn {model_name}: \d+/300 samples, \d+ samples/s, loss \d+\.\d{{4}} acc \d\.\d{{4}}", line
        ), line
    assert lines[-1].startswith(f"learn {model_name}: 300/300 samples")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_no_figures_before_the_first_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from clients.cli import _Report

    for updates in (0, 1):
        screen = _Terminal()
        monkeypatch.setattr(sys, "stderr", screen)
        monkeypatch.setenv("COLUMNS", "200")
        with _Report("learn m", 300, "samples") as report:
            if updates:
                report.update(100, 50.0, "loss 0.5000 acc 0.7500")
        shown = screen.getvalue()
        assert "learn m" in shown and "samples/s" in shown
        if updates:
            assert "loss 0.5000 acc 0.7500" in shown and "100/300" in shown
        else:
            assert "loss" not in shown and "acc" not in shown, shown
