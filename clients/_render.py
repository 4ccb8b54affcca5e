"""Rich tables for the CLI: what a person wants to see of models, stats and metrics."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from clients.types import LayerStats, Metrics, ModelInfo, Stats


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def models_table(models: list[ModelInfo]) -> Table:
    table = Table(title="models")
    for column in ("name", "task", "input_shape", "output", "norm", "step", "updated"):
        table.add_column(column, justify="right" if column == "step" else "left")
    for m in models:
        spec = m.spec
        output = spec.get("num_classes") or spec.get("output_dim") or 1
        norm = (spec.get("norm") or {}).get("kind", "-")
        updated = m.updated_at.isoformat(timespec="seconds") if m.updated_at else "-"
        table.add_row(m.name, m.task, str(spec.get("input_shape")), str(output), norm, str(m.step), updated)
    return table


def _spread(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return sum(values) / len(values), min(values), max(values)


def layer_summary(layer: LayerStats) -> dict[str, float | None]:
    """mu and std mean/min/max: the service's summary, or computed from ``mu``/``var``."""
    if layer.summary and all(k in layer.summary for k in ("mu_mean", "std_mean")):
        return layer.summary
    eps = layer.eps if layer.eps is not None else 1e-5
    mu = _spread(layer.mu)
    std = _spread([math.sqrt(max(v, 0.0) + eps) for v in layer.var])
    keys = ("mean", "min", "max")
    return {
        **{f"mu_{k}": v for k, v in zip(keys, mu, strict=True)},
        **{f"std_{k}": v for k, v in zip(keys, std, strict=True)},
    }


def stats_table(name: str, stats: Stats) -> Table:
    """Per ON layer: how far its running mean and std have drifted, and ``ls_rms``
    (about 1 when the estimates are right)."""
    table = Table(title=f"{name}: normalizer statistics at step {stats.step}")
    for column in ("layer", "features", "mu mean", "mu min", "mu max", "std mean", "std min", "std max"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    table.add_column("ls_rms", justify="right")
    table.add_column("samples", justify="right")
    for layer in stats.layers:
        s = layer_summary(layer)
        table.add_row(
            layer.name,
            str(layer.num_features),
            *(_num(s.get(k)) for k in ("mu_mean", "mu_min", "mu_max", "std_mean", "std_min", "std_max")),
            _num(layer.ls_rms),
            _num(layer.samples_tracked),
        )
    if not stats.layers:
        table.caption = "no Online Normalization layers (norm.kind is not 'online')"
    return table


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out[prefix] = value


def metrics_table(name: str, metrics: Metrics) -> Table:
    """Every metric the service reports, nested ones (latency) as dotted names."""
    table = Table(title=f"{name}: prequential metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    flat: dict[str, Any] = {}
    _flatten("", metrics.model_dump(exclude_unset=True), flat)
    for key, value in flat.items():
        table.add_row(key, _num(value, 6))
    return table
