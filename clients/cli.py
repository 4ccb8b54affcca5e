"""``onlinenorm``: the command line over the SDK. It speaks HTTP only; ``serve`` starts
the service as a subprocess and never imports it."""

from __future__ import annotations

import contextlib
import csv
import errno
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from typer.core import TyperCommand, TyperGroup

from clients._base import DEFAULT_BASE_URL, DEFAULT_BATCH_SIZE, ENV_API_KEY, ENV_URL
from clients._render import metrics_table, models_table, stats_table
from clients.client import Client
from clients.errors import APIConnectionError, APIError
from clients.files import label_value, open_samples


def _untyped_flags(params: list[Any]) -> list[Any]:
    """Typer's rich help prints every option's type, flags too (``--help <bool>``): a
    flag takes no value, so it shows none. (Typer's options are its vendored click's.)"""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


app = typer.Typer(
    cls=_Group, help="Train neural networks online over HTTP, one sample at a time.", no_args_is_help=True
)
models_app = typer.Typer(cls=_Group, help="Create, list, show and delete models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _out() -> Console:
    """A console per use, so the terminal width (``COLUMNS``) is read when printing."""
    return Console(soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True)


NORM_KINDS = ("online", "layer", "none")


@app.callback()
def _global(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar=ENV_URL, help="the service's base URL")] = DEFAULT_BASE_URL,
    api_key: Annotated[
        str | None,
        typer.Option(envvar=ENV_API_KEY, help="sent as 'Authorization: Bearer'", show_default=False),
    ] = None,
) -> None:
    ctx.obj = {"url": url, "api_key": api_key}


@contextlib.contextmanager
def _client(ctx: typer.Context) -> Iterator[Client]:
    """A client for the global options; any SDK error becomes a message and exit code 1."""
    try:
        with Client(ctx.obj["url"], ctx.obj["api_key"]) as client:
            yield client
    except APIConnectionError as exc:
        _err().print(
            f"[red]error:[/] cannot reach the service at {escape(ctx.obj['url'])}: {escape(exc.message)}"
        )
        raise typer.Exit(1) from None
    except APIError as exc:
        _err().print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None


def _fail(message: str) -> typer.Exit:
    _err().print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(2)


# ---------------------------------------------------------------------------- serve
#: ``python -m service`` (DESIGN.md): uvicorn with the host, port and log level of the
#: ``ONLINENORM_*`` settings; one process, since each model has exactly one writer.
SERVE_COMMAND = (sys.executable, "-m", "service")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _port_problem(host: str, port: int) -> str | None:
    """Why the service could not listen on ``host:port`` (taken, or not an address
    here), or None. Checked before anything starts: the embedded Redis, the models'
    recovery. Bound as uvicorn binds (SO_REUSEADDR), so a port in TIME_WAIT is free."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {host}: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use (another service?); pick another with --port"
            return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None


@app.command(cls=_Command)
def serve(
    host: Annotated[str, typer.Option(help="interface to bind; 0.0.0.0 exposes it")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    redis_url: Annotated[
        str | None,
        typer.Option(envvar="REDIS_URL", help="Redis to use; unset: an embedded one under --data-dir"),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="where the embedded Redis persists")] = None,
    key_prefix: Annotated[str | None, typer.Option(help="prefix of every Redis key")] = None,
    log_level: Annotated[str, typer.Option(help=", ".join(LOG_LEVELS))] = "info",
) -> None:
    """Start the service (python -m service) and wait for it; Ctrl-C stops it."""
    if log_level not in LOG_LEVELS:
        raise _fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    problem = _port_problem(host, port)
    if problem is not None:
        raise _fail(problem)
    env = dict(os.environ, ONLINENORM_HOST=host, ONLINENORM_PORT=str(port), ONLINENORM_LOG_LEVEL=log_level)
    if redis_url:
        env["REDIS_URL"] = redis_url
    else:
        env.pop("REDIS_URL", None)
        env.pop("ONLINENORM_REDIS_URL", None)
    if data_dir is not None:
        env["ONLINENORM_DATA_DIR"] = str(data_dir)
    if key_prefix is not None:
        env["ONLINENORM_KEY_PREFIX"] = key_prefix
    where = redis_url or f"embedded Redis under {data_dir or env.get('ONLINENORM_DATA_DIR', 'data')}"
    _err().print(escape(f"serving on http://{host}:{port} with {where}"))
    child = subprocess.Popen(SERVE_COMMAND, env=env)
    stopping = False

    def stop(signum: int, frame: Any) -> None:  # docker stop, systemd: pass it on
        nonlocal stopping
        stopping = True
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        code = child.wait()
    except KeyboardInterrupt:  # the child got the same SIGINT: give it time to snapshot
        stopping = True
        try:
            code = child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    # uvicorn re-raises the signal it stopped on: after a requested stop that is success.
    if stopping and code in (0, -signal.SIGTERM, -signal.SIGINT):
        code = 0
    raise typer.Exit(code if code >= 0 else 128 - code)


# --------------------------------------------------------------------------- models
def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        raise _fail(f"expected comma-separated integers, got {text!r}") from None


@models_app.command("create", cls=_Command)
def models_create(
    ctx: typer.Context,
    spec_file: Annotated[
        Path | None, typer.Argument(help="JSON spec ('-' for stdin); flags override its fields")
    ] = None,
    name: Annotated[str | None, typer.Option(help="model name")] = None,
    task: Annotated[str | None, typer.Option(help="classification or regression")] = None,
    input_shape: Annotated[str | None, typer.Option(help="e.g. 64, or 1,28,28")] = None,
    num_classes: Annotated[int | None, typer.Option(help="classification: number of classes")] = None,
    output_dim: Annotated[int | None, typer.Option(help="regression: number of outputs")] = None,
    norm: Annotated[str | None, typer.Option(help="online, layer or none")] = None,
    hidden: Annotated[str | None, typer.Option(help="hidden widths, e.g. 128,64")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adam")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    seed: Annotated[int | None, typer.Option(help="initialization seed")] = None,
) -> None:
    """Create a model from a JSON spec file and/or flags."""
    spec: dict[str, Any] = {}
    if spec_file is not None:
        try:
            text = sys.stdin.read() if str(spec_file) == "-" else spec_file.read_text()
            spec = json.loads(text)
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot read the spec {spec_file}: {exc}") from None
        if not isinstance(spec, dict):
            raise _fail("the spec must be a JSON object")
    if norm is not None and norm not in NORM_KINDS:
        raise _fail(f"--norm must be one of {', '.join(NORM_KINDS)}")
    flags = {
        "name": name,
        "task": task,
        "input_shape": _int_list(input_shape) if input_shape else None,
        "num_classes": num_classes,
        "output_dim": output_dim,
        "seed": seed,
    }
    spec.update({k: v for k, v in flags.items() if v is not None})
    for section, key, value in (
        ("norm", "kind", norm),
        ("network", "hidden", _int_list(hidden) if hidden else None),
        ("optimizer", "kind", optimizer),
        ("optimizer", "lr", lr),
    ):
        if value is not None:
            spec[section] = {**spec.get(section, {}), key: value}
    with _client(ctx) as client:
        model = client.create_model(spec)
    _out().print(
        f"created model [bold]{escape(model.name)}[/] ({model.task}, ON layers: {len(model.layers)})"
    )


@models_app.command("list", cls=_Command)
def models_list(ctx: typer.Context) -> None:
    """List every model."""
    with _client(ctx) as client:
        _out().print(models_table(client.list_models()))


@models_app.command("show", cls=_Command)
def models_show(ctx: typer.Context, name: str) -> None:
    """Show a model's spec, step and timestamps as JSON."""
    with _client(ctx) as client:
        model = client.get_model(name)
    _out().print_json(model.model_dump_json())


@models_app.command("delete", cls=_Command)
def models_delete(
    ctx: typer.Context,
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Delete a model and everything it learned."""
    if not yes:
        typer.confirm(f"delete model {name!r} and everything it learned?", abort=True)
    with _client(ctx) as client:
        client.delete_model(name)
    _out().print(f"deleted model [bold]{escape(name)}[/]")


# ---------------------------------------------------------------------- learn/predict
LabelOption = Annotated[
    str | None,
    typer.Option(help="label column (CSV: name or index), array (NPZ) or field (JSON lines)"),
]
FormatOption = Annotated[
    str | None, typer.Option("--format", help="csv, npz or jsonl; default: by extension")
]
FileArgument = Annotated[Path, typer.Argument(help="CSV, NPZ or JSON-lines samples")]
BatchSizeOption = Annotated[int, typer.Option(min=1, help="samples per request")]


@contextlib.contextmanager
def _bad_input() -> Iterator[None]:
    """A malformed file (or a value in it) ends the command with its message, exit code 2."""
    try:
        yield
    except ValueError as exc:
        raise _fail(str(exc)) from None


class _Running:
    """Prequential accuracy and mean loss over what this run has learned."""

    def __init__(self) -> None:
        self.count = 0
        self.correct = 0
        self.loss_sum = 0.0

    def add(self, ys: list[Any], results: list[Any]) -> None:
        for y, r in zip(ys, results, strict=True):
            self.count += 1
            self.correct += r.prediction == y
            self.loss_sum += r.loss or 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else 0.0


class _Report:
    """A long command's progress on stderr. On a terminal, a live bar whose summary
    (loss, accuracy) appears with the first result; piped, a plain line at every tenth
    of the total and at the end (a bar would be cut to the pipe's width)."""

    def __init__(self, description: str, total: int | None, unit: str) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done = 0
        self._stream: TextIO = sys.stderr
        self._live = self._stream.isatty()
        self._every = max(1, (total or 10_000) // 10)
        self._next_line = self._every
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._line = ""

    def __enter__(self) -> _Report:
        if self._live:
            columns = [
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>8.0f} " + self.unit + "/s"),
                TextColumn("{task.fields[summary]}"),
                TimeElapsedColumn(),
            ]
            self._progress = Progress(*columns, console=_err())
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, rate=0.0, summary="")
        return self

    def update(self, advance: int, rate: float, summary: str) -> None:
        self.done += advance
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=advance, rate=rate, summary=summary)
            return
        of = f"/{self.total}" if self.total is not None else ""
        self._line = f"{self.description}: {self.done}{of} {self.unit}, {rate:.0f} {self.unit}/s"
        self._line += f", {summary}" if summary else ""
        if self.done >= self._next_line:
            self._write()
            self._next_line = (self.done // self._every + 1) * self._every

    def _write(self) -> None:
        self._stream.write(self._line + "\n")
        self._stream.flush()
        self._line = ""

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
        elif self._line:
            self._write()  # the last figures, unless the last tenth just printed them


def _summary(loss: float, accuracy: float | None) -> str:
    text = f"loss {loss:.4f}"
    return text if accuracy is None else f"{text} acc {accuracy:.4f}"


def _batches(pairs: Iterator[tuple[Any, Any]], size: int) -> Iterator[tuple[list[Any], list[Any]]]:
    while chunk := list(itertools.islice(pairs, size)):
        yield [x for x, _ in chunk], [y for _, y in chunk]


@app.command(cls=_Command)
def learn(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the model to train")],
    file: FileArgument,
    label: LabelOption = None,
    fmt: FormatOption = None,
    batch_size: BatchSizeOption = DEFAULT_BATCH_SIZE,
) -> None:
    """Stream a file into a model, one step per sample, in file order."""
    with _bad_input():
        samples = open_samples(file, label=label, labelled=True, fmt=fmt)
    running = _Running()
    with _client(ctx) as client:
        classify = client.get_model(name).task == "classification"
        started = time.perf_counter()
        with _Report(f"learn {name}", samples.total, "samples") as report, _bad_input():
            for xs, ys in _batches(samples.pairs(), batch_size):
                results = client.learn_many(name, xs, ys, batch_size=batch_size)
                running.add(ys, results)
                rate = running.count / max(time.perf_counter() - started, 1e-9)
                summary = _summary(running.loss, running.accuracy if classify else None)
                report.update(len(results), rate, summary)
    elapsed = time.perf_counter() - started
    summary = f"learned {running.count} samples in {elapsed:.1f} s, mean loss {running.loss:.4f}"
    if classify:
        summary += f", prequential accuracy {running.accuracy:.4f}"
    _out().print(summary)


@app.command(cls=_Command)
def predict(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the model to ask")],
    file: FileArgument,
    label: LabelOption = None,
    fmt: FormatOption = None,
    batch_size: BatchSizeOption = DEFAULT_BATCH_SIZE,
) -> None:
    """Print one JSON prediction per sample (a label column, if found, is left out and scored)."""
    with _bad_input():
        samples = open_samples(file, label=label, labelled=False, fmt=fmt)
    correct = total = 0
    with _client(ctx) as client, _bad_input():
        for xs, ys in _batches(samples.pairs(), batch_size):
            for p, y in zip(client.predict_many(name, xs, batch_size=batch_size), ys, strict=True):
                sys.stdout.write(json.dumps(p.model_dump(include={"prediction", "probabilities"})) + "\n")
                total += 1
                correct += y is not None and p.prediction == y
    if samples.label is not None and total:
        _err().print(f"accuracy {correct / total:.4f} on {total} samples (label {samples.label!r})")


# ------------------------------------------------------------ labels and streams
def _json_value(text: str) -> Any:
    """A label as typed: JSON (``3``, ``2.5``, ``[1, 2]``), else the text itself."""
    try:
        return label_value(json.loads(text))
    except json.JSONDecodeError:
        return text


def _label_rows(file: Path) -> Iterator[tuple[str, Any]]:
    """``prediction_id,y`` rows of a CSV with that header, or JSON lines with those fields."""
    if file.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        with file.open() as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict) or "prediction_id" not in row or "y" not in row:
                        raise ValueError(f"{file.name} line {n}: expected an object with prediction_id and y")
                    yield str(row["prediction_id"]), label_value(row["y"])
        return
    with file.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"prediction_id", "y"} <= set(reader.fieldnames):
            raise ValueError(f"{file.name}: expected a CSV header with prediction_id and y")
        for row in reader:
            yield row["prediction_id"], _json_value(row["y"])


@app.command(cls=_Command)
def label(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the model whose predictions are labelled")],
    prediction_id: Annotated[
        str | None, typer.Argument(help="a prediction_id from a label_later predict")
    ] = None,
    y: Annotated[str | None, typer.Argument(help="its label (JSON: 3, 2.5, [1, 2])")] = None,
    file: Annotated[
        Path | None, typer.Option(help="many labels: CSV (prediction_id,y header) or JSON lines")
    ] = None,
    batch_size: BatchSizeOption = DEFAULT_BATCH_SIZE,
) -> None:
    """Learn from predictions made with label_later, now that their labels are known."""
    if (file is None) == (prediction_id is None) or (prediction_id is not None and y is None):
        raise _fail("give PREDICTION_ID and Y, or --file")
    with _client(ctx) as client, _bad_input():
        if file is None:
            assert prediction_id is not None and y is not None
            r = client.label(name, prediction_id, _json_value(y))
            _out().print_json(json.dumps(r.model_dump(include={"step", "loss", "prediction"})))
            return
        if not file.is_file():
            raise ValueError(f"no such file: {file}")
        results = client.label_many(name, _label_rows(file), batch_size=batch_size)
        step = results[-1].step if results else client.get_model(name).step
    _out().print(f"learned {len(results)} labels; model {escape(name)} is at step {step}")


def _stream_rows(
    file: Path, stream_column: str, label: str | None, id_column: str | None = None
) -> Iterator[dict[str, Any]]:
    """A CSV of events (header required): the stream column, an optional label column
    (an empty cell: no label for that step), an optional id column (a row with an id and
    no label waits for its label under that prediction_id), and the features (every
    other column)."""
    with file.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{file.name} is empty")
        if stream_column not in header:
            raise ValueError(f"{file.name} has no column {stream_column!r} (columns: {', '.join(header)})")
        if label is not None and label not in header:
            raise ValueError(f"{file.name} has no label column {label!r}")
        if id_column is not None and id_column not in header:
            raise ValueError(f"{file.name} has no id column {id_column!r}")
        s_at = header.index(stream_column)
        y_at = header.index(label) if label is not None else None
        id_at = header.index(id_column) if id_column is not None else None
        features = [i for i in range(len(header)) if i not in (s_at, y_at, id_at)]
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                step: dict[str, Any] = {"stream": row[s_at], "x": [float(row[i]) for i in features]}
            except (ValueError, IndexError):
                raise ValueError(f"{file.name} line {n}: features must be numbers") from None
            if y_at is not None and row[y_at].strip():
                step["y"] = _json_value(row[y_at])
            elif id_at is not None and row[id_at].strip():
                step["prediction_id"] = row[id_at].strip()
            yield step


def _count_rows(file: Path) -> int:
    with file.open(newline="") as f:
        return max(0, sum(1 for row in csv.reader(f) if row) - 1)


@app.command(cls=_Command)
def stream(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="a stateful rnn model")],
    file: Annotated[Path, typer.Argument(help="CSV of events, one time step per row, in order")],
    stream_column: Annotated[str, typer.Option(help="the column naming each row's stream")] = "stream",
    label: Annotated[str | None, typer.Option(help="the label column (empty cells: no label)")] = None,
    id_column: Annotated[
        str | None,
        typer.Option(help="a column of prediction ids: an unlabelled row with an id waits for `label`"),
    ] = None,
    batch_size: BatchSizeOption = DEFAULT_BATCH_SIZE,
) -> None:
    """Replay a CSV of events through a stateful model's streams, in file order."""
    with _bad_input():
        if not file.is_file():
            raise ValueError(f"no such file: {file}")
        total = _count_rows(file)
    steps = labelled = correct = waiting = 0
    loss_sum = 0.0
    started = time.perf_counter()
    with _client(ctx) as client, _bad_input(), _Report(f"stream {name}", total, "steps") as report:
        rows = _stream_rows(file, stream_column, label, id_column)
        while chunk := list(itertools.islice(rows, batch_size)):
            for step, result in zip(
                chunk, client.stream_steps(name, chunk, batch_size=batch_size), strict=True
            ):
                steps += 1
                waiting += result.prediction_id is not None
                if result.loss is not None:
                    labelled += 1
                    loss_sum += result.loss
                    correct += result.prediction == step.get("y")
            rate = steps / max(time.perf_counter() - started, 1e-9)
            summary = _summary(loss_sum / labelled, correct / labelled) if labelled else ""
            report.update(len(chunk), rate, summary)
    elapsed = time.perf_counter() - started
    text = f"{steps} steps ({labelled} labelled"
    text += f", {waiting} waiting for labels) in {elapsed:.1f} s" if waiting else f") in {elapsed:.1f} s"
    if labelled:
        text += f", mean loss {loss_sum / labelled:.4f}, prequential accuracy {correct / labelled:.4f}"
    _out().print(text)


# ------------------------------------------------------------------ stats/metrics
@app.command(cls=_Command)
def stats(
    ctx: typer.Context,
    name: str,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh live until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(min=0.05, help="seconds between refreshes")] = 1.0,
    count: Annotated[int, typer.Option(min=0, help="--watch: stop after this many refreshes (0: never)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw answer")] = False,
) -> None:
    """Per-layer Online Normalization statistics now: mu and std (mean, min, max over the
    layer's features), ls_rms (about 1 when the estimates are right), samples tracked."""
    with _client(ctx) as client:
        if as_json:
            _out().print_json(client.stats(name).model_dump_json())
            return
        if not watch:
            _out().print(stats_table(name, client.stats(name)))
            return
        with contextlib.suppress(KeyboardInterrupt), Live(console=_out(), auto_refresh=False) as live:
            for refresh in itertools.count(1):
                live.update(stats_table(name, client.stats(name)), refresh=True)
                if count and refresh >= count:
                    break
                time.sleep(interval)


@app.command(cls=_Command)
def metrics(
    ctx: typer.Context,
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw answer")] = False,
) -> None:
    """Prequential metrics: loss and accuracy (or MAE) of predictions made before learning."""
    with _client(ctx) as client:
        answer = client.metrics(name)
    if as_json:
        _out().print_json(answer.model_dump_json())
    else:
        _out().print(metrics_table(name, answer))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
