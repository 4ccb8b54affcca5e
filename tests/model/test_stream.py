"""Stateful rnn streams: exact truncated BPTT and Online Normalization's advance rules.

The oracle is written from ``shared/ONLINE_NORM.md`` and ``model/stream.py``'s rule in
float64 with plain autograd: the normalizer's forward with the statistics each step had
on arrival; the control-process backward for the newest step only, with ``u``/``v`` as
before the step; the plain derivative of the affine map for the older ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from model.layers import OnlineNorm1d
from model.learner import InvalidSampleError, NonFiniteStepError, OnlineLearner, StreamRequiredError
from model.stream_state import StreamState

from .helpers import assert_rel

F_IN, HIDDEN, K = 3, [6, 5], 4
BASE: dict[str, Any] = {
    "name": "s",
    "task": "regression",
    "input_shape": [F_IN],
    "network": {"stateful": True, "hidden": HIDDEN, "bptt": K},
    "optimizer": {"kind": "sgd", "lr": 0.05, "momentum": 0.0, "clip_grad_norm": None},
}
NORMS: dict[str, dict[str, Any]] = {
    "online-ls": {"kind": "online", "alpha_bkw": 0.9},
    "online-ac": {"kind": "online", "ecm": "ac", "clamp_val": 1.0},
    "online-noecm": {"kind": "online", "ecm": None},
    "layer": {"kind": "layer"},
    "none": {"kind": "none"},
}


def _spec(norm: str, **network: Any) -> dict[str, Any]:
    return {**BASE, "norm": NORMS[norm], "network": {**BASE["network"], **network}}


def _xs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=F_IN) * 4 + 2).astype(np.float32) for _ in range(n)]


def _ys(n: int, seed: int = 1) -> list[float]:
    return np.random.default_rng(seed).normal(size=n).tolist()


# ------------------------------------------------------------------------ oracle
class _OracleON(torch.autograd.Function):
    """ONLINE_NORM.md's layer with given statistics. The newest step (``acc`` given) takes
    ON's control-process backward and records its increments; the older ones (``acc``
    None) the affine map's plain derivative, their statistics being constants."""

    @staticmethod
    def forward(ctx, a, w, b, mu, var, u, v, eps, k, acc):  # type: ignore[no-untyped-def, override]
        s = torch.sqrt(var + eps)
        y = (a - mu) / s
        ctx.save_for_backward(y, s, w, u, v)
        ctx.k, ctx.acc = k, acc
        return y * w + b

    @staticmethod
    def backward(ctx, dz):  # type: ignore[no-untyped-def, override]
        y, s, w, u, v = ctx.saved_tensors
        k = ctx.k if ctx.acc is not None else 0.0
        dy = dz * w
        g = dy - k * v * y
        dx = g / s - k * u
        if ctx.acc is not None:
            ctx.acc["dv"] = ctx.acc["dv"] + (g * y)[0]
            ctx.acc["du"] = ctx.acc["du"] + dx[0]
            ctx.acc["n"] += 1
        return dx, (dz * y).sum(0), dz.sum(0), None, None, None, None, None, None, None


def _oracle(learner: OnlineLearner, state: StreamState, y: float) -> tuple[dict[str, Tensor], list[dict]]:
    """Gradients of every parameter and each ON layer's ``(du, dv)`` mean increments."""
    spec = learner.spec
    net = learner.network
    params = {n: p.detach().double().clone().requires_grad_(True) for n, p in net.named_parameters()}
    h = [t.double() for t in torch.split(state.h0, HIDDEN)]
    accs = [{"du": 0.0, "dv": 0.0, "n": 0} for _ in HIDDEN]
    top = None
    for t, step in enumerate(state.steps):
        inp = step.inputs.double()[None]
        for i in range(len(HIDDEN)):
            pre = f"layers.{i}."
            a = inp @ params[pre + "input_proj.weight"].T + h[i][None] @ params[pre + "recurrent.weight"].T
            if spec.norm.kind == "none":
                z = a + params[pre + "input_proj.bias"]
            elif spec.norm.kind == "layer":
                z = torch.nn.functional.layer_norm(
                    a, (HIDDEN[i],), params[pre + "norm.weight"], params[pre + "norm.bias"], spec.norm.eps
                )
            else:
                m = net.layers[i].norm
                sl = slice(sum(HIDDEN[:i]), sum(HIDDEN[: i + 1]))
                z = _OracleON.apply(
                    a,
                    params[pre + "norm.weight"],
                    params[pre + "norm.bias"],
                    step.mu[sl].double(),
                    step.var[sl].double(),
                    m.u.double(),
                    m.v.double(),
                    spec.norm.eps,
                    1 - spec.norm.alpha_bkw,
                    accs[i] if t == len(state.steps) - 1 else None,
                )
                if spec.norm.ecm == "ls":
                    z = z / torch.sqrt((z * z).mean(1, keepdim=True) + spec.norm.ls_eps)
                elif spec.norm.ecm == "ac":
                    z = torch.clamp(z, -spec.norm.clamp_val, spec.norm.clamp_val)
            h[i] = torch.tanh(z)[0]
            inp = h[i][None]
        top = inp
    assert top is not None
    out = top @ params["head.weight"].T + params["head.bias"]
    loss = ((out[0, 0] - y) ** 2).mean()
    loss.backward()
    grads = {n: p.grad for n, p in params.items()}
    return grads, accs


@pytest.mark.parametrize("path", ["eager", "fast"])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_tbptt_gradients_equal_an_independent_autograd_window(norm: str, path: str) -> None:
    """Full windows, weights changed inside them by earlier steps: the last step's
    gradients and control-process increments (the newest step's) match the float64
    oracle, on the eager (autograd) window and on the NumPy one."""
    if path == "fast" and norm == "layer":
        pytest.skip("the numpy window covers online and none")
    learner = OnlineLearner(_spec(norm), path=path)  # type: ignore[arg-type]
    assert learner.path == path
    state = None
    xs, ys = _xs(7), _ys(7)
    for x, y in zip(xs[:-1], ys[:-1], strict=True):
        state, _ = learner.stream_step(state, x, y)
    assert state is not None
    before = {n: p.detach().clone() for n, p in learner.network.named_parameters()}
    online = norm.startswith("online")
    uv = [(m.norm.u.clone(), m.norm.v.clone()) for m in learner.network.layers] if online else []
    # the oracle runs on the weights and control processes before the step
    pre_state = state.pushed(_arrival_copy(learner, state, xs[-1]), K)
    grads, accs = _oracle(learner, pre_state, ys[-1])
    new_state, result = learner.stream_step(state, xs[-1], ys[-1])
    assert result.loss is not None and len(new_state.steps) == K
    for name, p in learner.network.named_parameters():
        if name.startswith("input_norm"):
            continue
        assert_rel(p.grad, grads[name], 2e-4, name)
        assert not torch.equal(p.detach(), before[name]) or float(grads[name].abs().max()) == 0
    for (u0, v0), m, acc in zip(uv, learner.network.layers, accs, strict=False):
        assert acc["n"] == 1  # the newest step's increments, once
        assert_rel(m.norm.u - u0, acc["du"] / acc["n"], 2e-4, "u increment")
        assert_rel(m.norm.v - v0, acc["dv"] / acc["n"], 2e-4, "v increment")


def _arrival_copy(learner: OnlineLearner, state: StreamState, x: np.ndarray) -> Any:
    """The window step the learner's arrival of ``x`` will store, computed on a copy."""
    twin = OnlineLearner.from_state_bytes(learner.state_bytes())
    twin.network.train(True)
    _, step = twin.network.advance(twin.check_x(x), state.hidden)
    return step


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_a_window_recomputed_with_unchanged_weights_is_the_arrival_bit_for_bit(norm: str) -> None:
    learner = OnlineLearner(_spec(norm))
    state, outs = None, []
    for x in _xs(2 * K):  # no labels: the weights never change
        state, result = learner.stream_step(state, x)
        outs.append(result.prediction.prediction)
    assert state is not None
    learner.network.eval()
    stats = [b.clone() for b in learner.network.buffers()]
    with torch.enable_grad():
        out = learner.network.window(state, learner.network.controls())
    assert float(out.detach()[0, 0]) == outs[-1]
    assert all(torch.equal(a, b) for a, b in zip(stats, learner.network.buffers(), strict=True))


@pytest.mark.parametrize("norm", ["online-ls", "online-noecm"])
def test_learning_advances_forward_statistics_once_per_arrival_and_control_processes_once_per_step(
    norm: str,
) -> None:
    """From the same learner, a labelled step and an unlabelled one leave the same
    forward statistics (the window's K recomputed steps advance none of them), and
    only the labelled one moves ``u``/``v``."""
    spec = _spec(norm)
    learner = OnlineLearner(spec)
    state = None
    for i, (x, y) in enumerate(zip(_xs(3 * K), _ys(3 * K), strict=True)):
        twin = OnlineLearner.from_state_bytes(learner.state_bytes())
        twin_state, _ = twin.stream_step(state, x)
        state, _ = learner.stream_step(state, x, y)
        for a, b in zip(learner.network.layers, twin.network.layers, strict=True):
            assert torch.equal(a.norm.mu, b.norm.mu) and torch.equal(a.norm.var, b.norm.var)
            assert int(a.norm.num_samples_tracked) == i + 1  # once per arrival, not K times
            assert not torch.equal(a.norm.v, b.norm.v)
        assert torch.equal(learner.network.input_norm.mu, twin.network.input_norm.mu)
        assert torch.equal(state.steps[-1].inputs, twin_state.steps[-1].inputs)
    stats_u = [m.norm.u.clone() for m in learner.network.layers]
    learner.stream_step(state, _xs(1, seed=9)[0])  # no label: no optimizer step, u, v unchanged
    assert all(torch.equal(u, m.norm.u) for u, m in zip(stats_u, learner.network.layers, strict=True))


def test_interleaved_streams_advance_the_shared_statistics_in_arrival_order() -> None:
    spec = _spec("online-ls")
    learner = OnlineLearner(spec)
    replica = OnlineNorm1d(F_IN, alpha_fwd=learner.spec.norm.alpha_fwd, affine=False, ecm=None, warmup=True)
    states: dict[str, StreamState | None] = {"a": None, "b": None}
    order = ["a", "b", "b", "a", "b", "a", "a", "b", "a"]
    xs = _xs(len(order), seed=3)
    for i, (name, x) in enumerate(zip(order, xs, strict=True)):
        before = torch.cat([m.norm.mu.clone() for m in learner.network.layers])
        states[name], result = learner.stream_step(states[name], x, 0.5 if i % 2 else None)
        replica(torch.as_tensor(x)[None])  # the model's input statistics, in arrival order
        assert torch.equal(learner.network.input_norm.mu, replica.mu)
        assert torch.equal(learner.network.input_norm.var, replica.var)
        # the step was normalized with the model's statistics just before its arrival
        assert torch.equal(states[name].steps[-1].mu, before)  # type: ignore[union-attr]
        assert result.t == order[: i + 1].count(name) - 1  # its position in its own stream
    assert all(int(m.norm.num_samples_tracked) == len(order) for m in learner.network.layers)
    assert states["a"].t == 5 and states["b"].t == 4  # type: ignore[union-attr]


def test_streams_keep_their_own_hidden_states() -> None:
    """Without any normalizer statistics, two streams fed the same inputs in lockstep
    predict alike, and a new stream starts from zero: a stream's hidden state is its own."""
    learner = OnlineLearner(_spec("none", input_norm="none"))  # no statistics: independent streams
    a = b = None
    for x in _xs(6):
        a, ra = learner.stream_step(a, x)
        b, rb = learner.stream_step(b, x)
        assert ra.prediction == rb.prediction
    fresh, rf = learner.stream_step(None, _xs(6)[-1])
    assert rf.t == 0 and not torch.equal(fresh.hidden, a.hidden)  # type: ignore[union-attr]


def test_classification_streams_predict_classes_with_probabilities() -> None:
    spec = {**_spec("online-ls"), "task": "classification", "num_classes": 3}
    learner = OnlineLearner(spec)
    state = None
    for i, x in enumerate(_xs(5)):
        state, result = learner.stream_step(state, x, i % 3)
        probs = result.prediction.probabilities
        assert probs is not None and abs(sum(probs) - 1) < 1e-5
        assert result.prediction.prediction == int(np.argmax(probs))
        assert result.step == i + 1 and result.loss is not None
    assert learner.metrics_dict()["samples_seen"] == 5


def test_stateless_calls_are_refused_on_a_stateful_model_and_streams_on_a_stateless_one() -> None:
    learner = OnlineLearner(_spec("online-ls"))
    x = _xs(1)[0]
    for call in (
        lambda: learner.predict_one(x),
        lambda: learner.learn_one(x, 0.0),
        lambda: learner.predict_many([x]),
        lambda: learner.learn_many([x], [0.0]),
    ):
        with pytest.raises(StreamRequiredError):
            call()
    stateless = OnlineLearner({"name": "m", "task": "regression", "input_shape": [F_IN]})
    with pytest.raises(StreamRequiredError, match="not a stateful"):
        stateless.stream_step(None, x)
    assert OnlineLearner(_spec("online-ls")).path == "fast"  # the numpy window
    with pytest.raises(ValueError, match="layer"):
        OnlineLearner(_spec("layer"), path="fast")


# ------------------------------------------------------------- labels that arrive later
@pytest.mark.parametrize("path", ["fast", "eager"])
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_label_learned_later_is_the_step_with_its_label_when_nothing_came_between(
    task: str, path: str
) -> None:
    """``stream_step`` without ``y`` then ``stream_learn`` on the window it returned is
    ``stream_step`` with ``y``: the same weights, statistics, optimizer state and metrics,
    bit for bit (the window keeps each step's arrival statistics)."""
    spec = (
        _spec("online-ls") if task == "regression" else {**_spec("online-ls"), "task": task, "num_classes": 3}
    )
    now = OnlineLearner(spec, path=path)
    later = OnlineLearner(spec, path=path)
    a = b = None
    for i, x in enumerate(_xs(3 * K)):
        y = i % 3 if task == "classification" else _ys(3 * K)[i]
        a, ra = now.stream_step(a, x, y)
        b, rb = later.stream_step(b, x)
        learned = later.stream_learn(b, y, rb.prediction.prediction)
        assert learned.prediction == ra.prediction.prediction == rb.prediction.prediction
        assert learned.loss == ra.loss and learned.step == ra.step == i + 1
    assert now.state_bytes() == later.state_bytes()
    assert now.metrics_dict() == later.metrics_dict()


def test_a_late_label_learns_from_its_own_window_with_the_weights_of_now() -> None:
    """Steps that arrived after the labelled one (other streams, or the same stream) do
    not enter its window; its gradient is taken with the current weights, and the forward
    statistics do not move (only an arrival moves them), while u/v do."""
    learner = OnlineLearner(_spec("online-ls"))
    state, first = learner.stream_step(None, _xs(1)[0])
    window = state
    for x, y in zip(_xs(5, seed=4), _ys(5, seed=5), strict=True):
        state, _ = learner.stream_step(state, x, y)  # the stream moves on, labelled
    mu = [m.norm.mu.clone() for m in learner.network.layers]
    u = [m.norm.u.clone() for m in learner.network.layers]
    oracle = OnlineLearner.from_state_bytes(learner.state_bytes())
    grads, _ = _oracle(oracle, window, 0.25)
    before = {n: p.detach().clone() for n, p in learner.network.named_parameters()}
    result = learner.stream_learn(window, 0.25, first.prediction.prediction)
    assert result.step == 6 and result.prediction == first.prediction.prediction
    for name, p in learner.network.named_parameters():
        if name in grads:  # plain SGD, lr 0.05: the update is the oracle's gradient
            assert_rel(before[name] - p.detach(), 0.05 * grads[name], 1e-3, name)
    assert all(torch.equal(a, m.norm.mu) for a, m in zip(mu, learner.network.layers, strict=True))
    assert not all(torch.equal(a, m.norm.u) for a, m in zip(u, learner.network.layers, strict=True))


def test_a_late_label_that_is_not_finite_or_not_valid_changes_nothing() -> None:
    learner = OnlineLearner(_spec("online-ls"))
    state, r = learner.stream_step(None, _xs(1)[0])
    before = learner.state_bytes()
    with pytest.raises(InvalidSampleError):
        learner.stream_learn(state, "one", r.prediction.prediction)
    with pytest.raises(InvalidSampleError):
        learner.stream_learn(learner.new_stream(), 0.5, 0.0)  # an empty window: nothing to learn from
    with pytest.raises(NonFiniteStepError):
        learner.stream_learn(state, 1e38, r.prediction.prediction)
    assert learner.state_bytes() == before
