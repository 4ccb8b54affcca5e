"""Per-model Prometheus series (watch_telemetry.py): layer summaries as gauges labelled
by model and layer, samples and errors counted per model, and all of a model's series
gone once it is deleted."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import httpx

from service.config import Settings
from tests.service.conftest import create, regression_spec, samples, spec
from tests.service.servers import REPO, ThreadServer, wait_for
from tests.service.test_history import wait_published

BOOM = {"x": [1e30, 1e30, 1e30], "y": 1e30}  # finite in float32; its squared error is not


def series(client: httpx.Client) -> dict[str, float]:
    """``name{labels}`` -> value, for the per-model series."""
    out = {}
    for line in client.get("/metrics").text.splitlines():
        match = re.match(r"^(onlinenorm_(?:norm|model)_\S+) (\S+)$", line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def test_gauges_follow_the_published_summaries(make_settings: Callable[..., Settings]) -> None:
    with ThreadServer(make_settings(STATS_EVERY_STEPS=5)) as srv, srv.client() as c:
        info = create(c, spec(norm={"kind": "online", "ecm": "ls"}))
        for s in samples(10):
            c.post("/v1/models/m/learn", json=s)
        last = wait_published(c, 10)[-1]
        values = series(c)
        for layer in last["layers"]:
            labels = f'{{layer="{layer["name"]}",model="m"}}'
            for field in ("mu_mean", "mu_spread", "std_mean", "std_spread", "u_abs_max", "v_abs_max"):
                assert values[f"onlinenorm_norm_{field}{labels}"] == layer[field], field
            assert values[f"onlinenorm_norm_samples_tracked{labels}"] == layer["samples_tracked"] == 10
            if layer["ls_rms"] is None:  # no compensation on this layer: no series
                assert f"onlinenorm_norm_ls_rms{labels}" not in values
            else:
                assert values[f"onlinenorm_norm_ls_rms{labels}"] == layer["ls_rms"]
        assert {n for n in values if n.startswith("onlinenorm_norm_mu_mean")} == {
            f'onlinenorm_norm_mu_mean{{layer="{name}",model="m"}}' for name in info["layers"]
        }
        assert values['onlinenorm_model_step{model="m"}'] == 10
        assert values['onlinenorm_model_loss_ewm{model="m"}'] == last["metrics"]["loss_ewm"]
        assert values['onlinenorm_model_accuracy_ewm{model="m"}'] == last["metrics"]["accuracy_ewm"]
        assert values['onlinenorm_model_samples_learned_total{model="m"}'] == 10


def test_counters_per_model_and_deletion_removes_every_series(make_settings: Callable[..., Settings]) -> None:
    with ThreadServer(make_settings(STATS_EVERY_STEPS=1)) as srv, srv.client() as c:
        create(c, spec())
        create(c, regression_spec(optimizer={"kind": "sgd", "lr": 0.01, "clip_grad_norm": None}))
        c.post("/v1/models/m/learn/batch", json={"samples": samples(3)})
        good = {"x": [1.0, 2.0, 3.0], "y": 0.5}
        assert c.post("/v1/models/r/learn/batch", json={"samples": [good, BOOM, good]}).status_code == 422
        wait_for(lambda: 'onlinenorm_model_step{model="r"}' in series(c), 10, "r's stats")
        values = series(c)
        assert values['onlinenorm_model_samples_learned_total{model="m"}'] == 3
        assert values['onlinenorm_model_samples_learned_total{model="r"}'] == 1
        assert values['onlinenorm_model_nonfinite_steps_total{model="r"}'] == 1
        assert 'onlinenorm_model_nonfinite_steps_total{model="m"}' not in values
        assert values['onlinenorm_model_mae_ewm{model="r"}'] > 0
        assert any('model="m"' in name for name in values)
        assert c.delete("/v1/models/m").status_code == 204
        after = series(c)
        assert not [name for name in after if 'model="m"' in name]
        assert [name for name in after if 'model="r"' in name]


def test_grafana_dashboard_uses_only_exported_metrics(make_settings: Callable[..., Settings]) -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    names = {re.sub(r"_(total|bucket)$", "", n) for e in exprs for n in re.findall(r"onlinenorm_\w+", e)}
    assert len(names) >= 15
    assert any('route="/v1/models/{name}/learn"' in e for e in exprs)  # a route template label
    with ThreadServer(make_settings()) as srv, srv.client() as c:
        types = re.findall(r"^# TYPE (\S+) ", c.get("/metrics").text, re.M)
    families = {t.removesuffix("_total") for t in types}
    assert names <= families, names - families
