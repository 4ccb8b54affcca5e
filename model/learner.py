"""``OnlineLearner``: one optimizer step per sample, prequential, exactly restorable.

What the service drives. Names follow River (``learn_one``, ``predict_one``,
``learn_many``, ``predict_many``) because every online-learning user knows them. A
stateful rnn (``network.stateful``) learns and predicts through
:meth:`OnlineLearner.stream_step` instead, one time step of one stream per call
(:mod:`model.stream` has its maths and its Online Normalization rule).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from model import fast, stream_fast
from model.fast.optim import UpdateGuard
from model.layers import ActivationClamp, LayerScaling, OnlineNorm
from model.metrics import PrequentialMetrics
from model.networks import build_network, online_norm_layers, skip_parameters
from model.spec import ModelSpec
from model.state_io import (
    dump_state,
    load_state,
    optimizer_from_parts,
    optimizer_to_parts,
    prefixed,
    unprefixed,
)
from model.stream import Control, StatefulRNN
from model.stream_state import StreamLayout, StreamState
from model.target_scale import TargetScaler

STATE_FORMAT = 1
PredictionValue = int | float | list[float]
T = TypeVar("T")
#: ``fast``: the explicit step of :mod:`model.fast` where it covers the spec and device;
#: ``eager``: the autograd step, the reference; ``auto``: fast where covered, else eager.
StepPath = Literal["auto", "fast", "eager"]


class InvalidSampleError(ValueError):
    """``x`` or ``y`` does not fit the model's spec; the message names the problem."""


class StreamRequiredError(InvalidSampleError):
    """A stateful rnn takes one time step of one stream per call: use ``stream_step``."""


class StepRolledBackError(Exception):
    """A step did not happen, and the learner was left exactly as before it.

    In :meth:`OnlineLearner.learn_many`, ``index`` is the failing sample and ``results``
    holds the results of the samples before it, which stay applied.
    """

    def __init__(self, message: str, index: int = 0, results: list[LearnResult] | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.results = results or []


class NonFiniteStepError(StepRolledBackError, ArithmeticError):
    """A step's loss or gradients were not finite; the learner was left as before."""


class NonFinitePredictionError(ValueError):
    """The network's output for this input is not finite (an input far outside what the
    model has seen can overflow it): no prediction is made, nothing changes."""


class StepFailedError(StepRolledBackError, RuntimeError):
    """The forward or backward pass raised (an allocation failed, say); the learner was
    left as before, ON buffers included."""


class LearnerCorruptedError(RuntimeError):
    """The optimizer update itself raised, so the weights may be half-updated: the
    learner must not be used again; rebuild it from its last good state.

    In :meth:`OnlineLearner.learn_many`, ``index`` is the failing sample: the samples
    before it were applied cleanly."""

    def __init__(self, message: str, index: int = 0) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Prediction:
    prediction: PredictionValue
    probabilities: list[float] | None = None


@dataclass(frozen=True)
class LearnResult:
    step: int
    loss: float
    prediction: PredictionValue


@dataclass(frozen=True)
class StreamResult:
    """One time step of a stream: its position ``t`` (0 for the stream's first step),
    the prediction made from the hidden state after ``x_t`` and before learning, the
    loss of the step's update (``None`` without ``y``) and the learner's step count."""

    t: int
    prediction: Prediction
    loss: float | None
    step: int


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when available; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _make_optimizer(spec: ModelSpec, network: nn.Module) -> torch.optim.Optimizer:
    """The spec's optimizer, fused: one kernel per step instead of several per tensor.

    The linear skip path gets ``skip_lr_scale`` times the learning rate: a linear model
    tolerates larger steps, and it carries the predictions while the deep path warms up.
    """
    opt = spec.optimizer
    skip = skip_parameters(network)
    skip_ids = {id(p) for p in skip}
    groups: list[dict[str, Any]] = [
        {"params": [p for p in network.parameters() if p.requires_grad and id(p) not in skip_ids]}
    ]
    if skip:
        groups.append({"params": skip, "lr": opt.lr * opt.skip_lr_scale})
    if opt.kind == "sgd":
        return torch.optim.SGD(
            groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, fused=True
        )
    return torch.optim.Adam(groups, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay, fused=True)


def _health_record(module: LayerScaling | ActivationClamp) -> Tensor | None:
    return module.last_mean_sq if isinstance(module, LayerScaling) else module.last_input


def _set_health_record(module: LayerScaling | ActivationClamp, record: Tensor | None) -> None:
    if isinstance(module, LayerScaling):
        module.last_mean_sq = record
    else:
        module.last_input = record


_NOT_FINITE_X = "x contains NaN or infinite values (or numbers too large for float32)"


def _numeric(value: Any, expected: str) -> np.ndarray:
    """``value`` as a float32 array, refusing strings, booleans and nulls by name
    (numpy alone would read ``"1"`` as 1.0 and ``True`` as 1.0)."""
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nesting
        raise InvalidSampleError(f"{expected}: {exc}") from exc
    if arr.dtype.kind not in "iuf":
        kind = {"b": "booleans", "U": "strings", "S": "strings", "O": "nulls or mixed values"}
        found = kind.get(arr.dtype.kind, arr.dtype.name)
        raise InvalidSampleError(f"{expected} (found {found})")
    with np.errstate(over="ignore"):  # overflow becomes inf, refused by the finiteness check
        return arr.astype(np.float32, copy=False)


def _non_finite(loss: float, grad_norm: float) -> NonFiniteStepError:
    what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", grad_norm)
    return NonFiniteStepError(f"non-finite {what} ({value}); the step was rolled back")


def _non_finite_weights() -> NonFiniteStepError:
    return NonFiniteStepError(
        "non-finite weights after the update (check lr and weight_decay); the step was rolled back"
    )


def _step_failed(exc: Exception) -> StepFailedError:
    return StepFailedError(f"the step failed ({type(exc).__name__}: {exc}); it was rolled back")


def _update_failed(exc: Exception) -> LearnerCorruptedError:
    return LearnerCorruptedError(
        f"the optimizer update failed ({type(exc).__name__}: {exc}); the weights may be half-updated"
    )


def _summary(values: Tensor) -> tuple[float, float, float]:
    return float(values.mean()), float(values.min()), float(values.max())


class OnlineLearner:
    """A network from a spec, trained one sample at a time.

    Every ``learn_*`` call is prequential: the prediction it returns was made before the
    update. A step whose loss or gradients are not finite is rolled back entirely
    (weights, optimizer state, ON buffers, metrics) and raises
    :class:`NonFiniteStepError`. Not thread-safe: callers serialize access.

    ``path`` picks the step (:data:`StepPath`). It is decided here, from the spec and
    device alone, so every learner of a spec takes the same path on every replay. The
    fast path bypasses autograd and optimizer hooks; register hooks on an ``eager`` one.
    """

    def __init__(
        self,
        spec: ModelSpec | Mapping[str, Any],
        device: str | torch.device = "cpu",
        path: StepPath = "auto",
    ) -> None:
        self.spec = spec if isinstance(spec, ModelSpec) else ModelSpec.model_validate(spec)
        self.device = resolve_device(device)
        self.network = build_network(self.spec).to(self.device)
        self._params = [p for p in self.network.parameters() if p.requires_grad]
        self.optimizer = _make_optimizer(self.spec, self.network)
        self._guard = UpdateGuard(self._params, self.optimizer)
        stateful = self.spec.network.stateful
        # model.fast has no stream step: a stateful rnn's fast path is the NumPy window
        reason = (stream_fast if stateful else fast).unsupported_reason(self.spec, self.device)
        if path == "fast" and reason is not None:
            raise ValueError(reason)
        if path not in ("auto", "fast", "eager"):
            raise ValueError(f"path must be 'auto', 'fast' or 'eager' (got {path!r})")
        self._fast: fast.FastStep | None = None
        self._window: stream_fast.NumpyWindow | None = None
        if path != "eager" and reason is None:
            if stateful:
                assert isinstance(self.network, StatefulRNN)
                self._window = stream_fast.NumpyWindow(self.network, self.spec.task == "classification")
            else:
                self._fast = fast.build(self.spec, self.network, self.optimizer)
        #: the step this learner takes: ``"fast"`` or ``"eager"``
        self.path: Literal["fast", "eager"] = (
            "eager" if self._fast is None and self._window is None else "fast"
        )
        self.metrics = PrequentialMetrics(task=self.spec.task)
        self.step = 0
        #: the shapes of this model's stream states; ``None`` unless the spec is stateful
        self.stream_layout = StreamLayout.of(self.spec) if self.spec.network.stateful else None
        self._norms = online_norm_layers(self.network)
        self._state_buffers = [b for _, m in self._norms for b in m.buffers(recurse=False)]
        self._backup = [b.clone() for b in self._state_buffers]
        self._health = [
            m.compensation
            for _, m in self._norms
            if isinstance(m.compensation, LayerScaling | ActivationClamp)
        ]
        # Within one sample the RNN's ON layers advance once per time step, so its
        # training-mode output is not the eval-mode prediction; elsewhere it is, exactly.
        self._train_output_is_prediction = self.spec.network_kind != "rnn"
        self._classify = self.spec.task == "classification"
        #: ``network.target_norm: running``: the targets' running mean and deviation
        self.target_scaler = (
            TargetScaler(self.spec.output_size) if self.spec.network.target_norm == "running" else None
        )
        self._input_shape = tuple(self.spec.input_shape)
        self._input_size = self.spec.input_size
        self._training: bool | None = None
        # label tensors made once: the steps only read them, and making one costs microseconds
        self._labels = (
            [torch.tensor(i) for i in range(min(self.spec.output_size, 256))] if self._classify else []
        )

    # ----------------------------------------------------------------- validation
    def check_x(self, x: Any) -> Tensor:
        """``x`` as a float32 tensor of ``input_shape``; accepts nested or flat lists,
        numpy arrays and tensors. Raises :class:`InvalidSampleError` naming the problem."""
        if type(x) is np.ndarray and x.dtype == np.float32 and x.shape == self._input_shape:
            # what the service's validated bodies hold: only the finiteness is left to check
            if not np.isfinite(x).all():
                raise InvalidSampleError(_NOT_FINITE_X)
            return torch.from_numpy(x)
        if isinstance(x, Tensor):
            if x.dtype == torch.bool or x.is_complex():
                raise InvalidSampleError(f"x must be real numbers (got a {x.dtype} tensor)")
            t = x.detach().to(device="cpu", dtype=torch.float32)
            finite = bool(np.isfinite(t.numpy()).all())
        else:
            arr = _numeric(x, f"x must be numbers nested to {list(self._input_shape)}")
            finite = bool(np.isfinite(arr).all())  # NumPy's check costs a tenth of torch's
            t = torch.from_numpy(arr)
        if tuple(t.shape) != self._input_shape:
            if t.dim() != 1 or t.numel() != self._input_size:
                raise InvalidSampleError(
                    f"x has shape {list(t.shape)}; expected {list(self._input_shape)}"
                    f" (or a flat list of {self._input_size} numbers)"
                )
            t = t.reshape(self._input_shape)
        if not finite:
            raise InvalidSampleError(_NOT_FINITE_X)
        return t

    def check_y(self, y: Any) -> Tensor:
        """``y`` as a tensor: a class index, or ``output_dim`` finite numbers."""
        if self._classify:
            return self._check_label(y)
        size = self.spec.output_size
        if isinstance(y, Tensor):
            y = y.detach().cpu().numpy()
        t = torch.from_numpy(_numeric(y, f"y must be a number or a list of {size} numbers")).reshape(-1)
        if t.numel() != size:
            raise InvalidSampleError(f"y has {t.numel()} values; this model predicts {size}")
        if not bool(torch.isfinite(t).all()):
            raise InvalidSampleError("y contains NaN or infinite values")
        return t

    def _check_label(self, y: Any) -> Tensor:
        k = self.spec.output_size
        if type(y) is int and 0 <= y < len(self._labels):  # the common case, made once
            return self._labels[y]
        if isinstance(y, bool) or not isinstance(y, int | float | np.integer | np.floating):
            if isinstance(y, Tensor) and y.numel() == 1 and not y.is_floating_point():
                y = int(y.item())
            else:
                raise InvalidSampleError(f"y must be a class index, an integer in [0, {k}) (got {y!r})")
        if isinstance(y, float | np.floating) and not float(y).is_integer():
            raise InvalidSampleError(f"y must be a class index, an integer in [0, {k}) (got {y!r})")
        label = int(y)
        if not 0 <= label < k:
            raise InvalidSampleError(f"y = {label} is out of range: classes are 0 .. {k - 1}")
        if label < len(self._labels):
            return self._labels[label]
        return torch.tensor(label, dtype=torch.long)

    # ----------------------------------------------------------------- prediction
    def _set_training(self, training: bool) -> None:
        """Switch modes only on change: ``Module.train()`` walks every submodule."""
        if self._training is not training:
            self.network.train(training)
            self._training = training

    @torch.no_grad()
    def _forward_eval(self, xb: Tensor) -> Tensor:
        if self._fast is not None:
            return torch.from_numpy(self._fast.predict(xb.numpy()))
        self._set_training(False)
        return self.network(xb.to(self.device))

    def _decode(self, out: Tensor) -> list[Prediction]:
        """Network outputs as predictions: classes with probabilities, or values.

        Raises :class:`NonFinitePredictionError` rather than answer NaN or infinity."""
        out = out.detach().cpu()
        if self.target_scaler is not None:  # in the outputs' dtype, then rounded as they are
            out = torch.from_numpy(self.target_scaler.unscale(out.numpy()))
        out = out.float()
        finite = np.isfinite(out.numpy()).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            where = f" for sample {bad}" if out.shape[0] > 1 else ""
            raise NonFinitePredictionError(
                f"the model's output{where} is not finite: the input is too far outside what it can handle"
            )
        if self._classify:
            labels = out.argmax(dim=1).tolist()  # the logits' argmax, as in training steps
            probs = torch.softmax(out, dim=1).tolist()
            return [Prediction(lab, p) for lab, p in zip(labels, probs, strict=True)]
        values = out.tolist()
        if self.spec.output_size == 1:
            return [Prediction(v[0]) for v in values]
        return [Prediction(v) for v in values]

    def _stateless(self) -> None:
        if self.stream_layout is not None:
            raise StreamRequiredError(
                f"model {self.spec.name!r} is a stateful rnn: it takes one time step of a stream per call"
            )

    def predict_one(self, x: Any) -> Prediction:
        """Eval-mode prediction (frozen normalizer statistics); changes nothing."""
        self._stateless()
        return self._decode(self._forward_eval(self.check_x(x)[None]))[0]

    def predict_many(self, xs: Sequence[Any]) -> list[Prediction]:
        """Predictions for many samples in one eval-mode forward; changes nothing."""
        self._stateless()
        if len(xs) == 0:
            return []
        batch = torch.stack([self.check_x(x) for x in xs])
        return self._decode(self._forward_eval(batch))

    # ------------------------------------------------------------------- learning
    def learn_one(self, x: Any, y: Any) -> LearnResult:
        """Predict, then take one optimizer step on ``(x, y)``."""
        self._stateless()
        return self._step(self.check_x(x), self.check_y(y))

    def learn_many(self, xs: Sequence[Any], ys: Sequence[Any]) -> list[LearnResult]:
        """One step per sample, in order. Every sample is validated before any is applied."""
        self._stateless()
        if len(xs) != len(ys):
            raise InvalidSampleError(f"got {len(xs)} inputs but {len(ys)} targets")
        checked = []
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            try:
                checked.append((self.check_x(x), self.check_y(y)))
            except InvalidSampleError as exc:
                raise InvalidSampleError(f"sample {i}: {exc}") from exc
        results: list[LearnResult] = []
        for i, (xt, yt) in enumerate(checked):
            try:
                results.append(self._step(xt, yt))
            except StepRolledBackError as exc:
                raise type(exc)(f"sample {i}: {exc}", index=i, results=results) from exc
            except LearnerCorruptedError as exc:
                raise LearnerCorruptedError(f"sample {i}: {exc}", index=i) from exc
        return results

    def _clear_grads(self) -> None:
        """``zero_grad(set_to_none=True)`` without the optimizer's per-call wrappers."""
        for p in self._params:
            p.grad = None

    def _save_norm_state(self) -> list[Tensor | None]:
        """Copy the ON buffers aside; return the health records, which a rollback restores."""
        if self._state_buffers:
            torch._foreach_copy_(self._backup, self._state_buffers)
        return [_health_record(c) for c in self._health]

    def _save_fast_norm_state(self) -> list[Tensor | None]:
        """:meth:`_save_norm_state` for the fast step, which fills health records in place:
        copies of them, which a rollback puts on the modules instead."""
        if self._state_buffers:
            torch._foreach_copy_(self._backup, self._state_buffers)
        return [None if r is None else r.clone() for r in map(_health_record, self._health)]

    def _restore_norm_state(self, health: list[Tensor | None]) -> None:
        if self._state_buffers:
            torch._foreach_copy_(self._state_buffers, self._backup)
        for module, record in zip(self._health, health, strict=True):
            _set_health_record(module, record)

    def _loss(self, out: Tensor, target: Tensor) -> Tensor:
        if self._classify:
            return nn.functional.cross_entropy(out, target)
        return nn.functional.mse_loss(out, target)

    def _step(self, x: Tensor, y: Tensor) -> LearnResult:
        trained = y if self.target_scaler is None else self.target_scaler.scale(y)
        if self._fast is not None:
            return self._fast_step(x, trained, y)
        xb, yb = x[None].to(self.device), trained[None].to(self.device)
        health = self._save_norm_state()
        try:
            return self._try_step(xb, yb, y, health)
        except (StepRolledBackError, LearnerCorruptedError):
            raise
        except Exception as exc:  # forward or backward raised: nothing was updated but ON state
            self._restore_norm_state(health)
            self._clear_grads()
            raise _step_failed(exc) from exc

    def _try_step(self, xb: Tensor, yb: Tensor, y: Tensor, health: list[Tensor | None]) -> LearnResult:
        prediction_out = None if self._train_output_is_prediction else self._forward_eval(xb)
        self._set_training(True)
        out = self.network(xb)
        loss = self._loss(out, yb)
        self._clear_grads()
        loss.backward()
        grad_norm = self._clip_grads()
        source = out if prediction_out is None else prediction_out
        host = [loss.detach().float(), grad_norm.float()]
        if self._classify:  # the class comes back in the same host sync
            host.append(source.detach()[0].argmax().float())
        loss_value, grad_value, *label = torch.stack(host).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(grad_value)):
            self._restore_norm_state(health)
            self._clear_grads()
            raise _non_finite(loss_value, grad_value)
        prediction: PredictionValue
        if self._classify:
            prediction = int(label[0])
            score = float(prediction == int(y))
        else:
            prediction = self._decode(source)[0].prediction
            score = float((torch.as_tensor(prediction, dtype=torch.float32) - y).abs().mean())
        try:
            self._guarded_update(grad_value)
        except NonFiniteStepError:
            self._restore_norm_state(health)
            self._clear_grads()
            raise
        self._advance(loss_value, score, y)
        return LearnResult(step=self.step, loss=loss_value, prediction=prediction)

    def _advance(self, loss_value: float, score: float, y: Tensor) -> None:
        """What an applied step moves besides the network: the count, the metrics, the
        target statistics (which the next step's target is scaled by)."""
        self.step += 1
        self.metrics.update(loss_value, score)
        if self.target_scaler is not None:
            self.target_scaler.update(y)

    def _clip_grads(self) -> Tensor:
        """The gradients' total 2-norm, after clipping them to ``clip_grad_norm``:
        clip_grad_norm_'s maths (coefficient clamped at 1) without its wrappers, which on
        a batch-of-one step each cost as much as a kernel."""
        grads = [p.grad for p in self._params if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        max_norm = self.spec.optimizer.clip_grad_norm
        if max_norm is not None:
            torch._foreach_mul_(grads, torch.clamp(max_norm / (grad_norm + 1e-6), max=1.0))
        return grad_norm

    def _guarded_update(self, grad_value: float) -> None:
        """The autograd steps' optimizer update under the update guard: if the weights
        come out non-finite, they and the optimizer state are put back and
        :class:`NonFiniteStepError` is raised (the caller restores what else it changed)."""
        self._guard.prepare(grad_value)
        try:
            self.optimizer.step()
        except Exception as exc:
            raise _update_failed(exc) from exc
        if not self._guard.finite():
            self._guard.restore()
            raise _non_finite_weights()

    def _fast_step(self, x: Tensor, trained: Tensor, y: Tensor) -> LearnResult:
        """The step of :mod:`model.fast`: computed without writing, checked, applied.
        ``trained`` is the target the step fits (``y`` itself, or scaled)."""
        assert self._fast is not None
        target: int | np.ndarray = int(y) if self._classify else trained.numpy()
        try:
            pending = self._fast.compute(x.numpy(), target)
        except Exception as exc:  # nothing was written yet
            raise _step_failed(exc) from exc
        loss_value, grad_value = pending.loss, pending.grad_norm
        if not (math.isfinite(loss_value) and math.isfinite(grad_value)):
            raise _non_finite(loss_value, grad_value)
        out = pending.output
        prediction: PredictionValue
        if self._classify:
            prediction = int(out.argmax())
            score = float(prediction == target)
        else:
            if self.target_scaler is not None:
                out = self.target_scaler.unscale(out[None])[0]
            prediction = float(out[0]) if out.shape[0] == 1 else out.tolist()
            score = float(np.abs(out - y.numpy()).mean())
        # the ON state is copied aside only when the update might not stay finite
        health = self._save_fast_norm_state() if self._guard.prepare(grad_value) else []
        try:
            pending.apply()
        except Exception as exc:
            raise _update_failed(exc) from exc
        if not self._guard.finite():
            self._guard.restore()
            self._restore_norm_state(health)
            raise _non_finite_weights()
        self._advance(loss_value, score, y)
        return LearnResult(step=self.step, loss=loss_value, prediction=prediction)

    # -------------------------------------------------------------------- streams
    def _layout(self) -> StreamLayout:
        if self.stream_layout is None:
            raise StreamRequiredError(f"model {self.spec.name!r} is not a stateful rnn: it has no streams")
        return self.stream_layout

    def new_stream(self) -> StreamState:
        """The state of a stream that has seen nothing (what ``None`` means in :meth:`stream_step`)."""
        return StreamState.empty(self._layout())

    def stream_state_from_parts(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> StreamState:
        """A stream state from :meth:`StreamState.to_parts`, checked against this model
        (``ValueError`` if it does not fit)."""
        return StreamState.from_parts(tensors, meta, self._layout())

    def stream_state_bytes(self, state: StreamState) -> bytes:
        """One stream's state as bytes: safetensors + JSON, deterministic."""
        tensors, meta = state.to_parts()
        return dump_state(tensors, {"stream": meta})

    def stream_state_from_bytes(self, data: bytes) -> StreamState:
        """Inverse of :meth:`stream_state_bytes` (``ValueError`` on a malformed blob)."""
        tensors, meta = load_state(data)
        return self.stream_state_from_parts(tensors, meta.get("stream"))

    def _check_stream(self, state: StreamState | None, layout: StreamLayout) -> StreamState:
        if state is None:
            return StreamState.empty(layout)
        if not isinstance(state, StreamState):
            raise InvalidSampleError(f"state must be a StreamState or None (got {type(state).__name__})")
        fits = tuple(state.h0.shape) == (layout.total_hidden,) and len(state.steps) <= min(
            state.t, layout.bptt
        )
        if fits and state.steps:
            last = state.steps[-1]
            fits = tuple(last.inputs.shape) == (layout.features,) and (last.mu is not None) == layout.online
        if not fits:
            raise InvalidSampleError("the stream state is not one of this model's")
        return state

    def stream_step(
        self, state: StreamState | None, x: Any, y: Any = None
    ) -> tuple[StreamState, StreamResult]:
        """One time step ``x`` of one stream whose state is ``state`` (``None``: a new stream).

        Advances the stream with ``x`` and predicts from its new hidden state; with ``y``,
        then learns by truncated BPTT over the stream's last ``bptt`` steps: one
        optimizer step. Returns the stream's new state (``state`` itself is never
        modified) and the result. ``x``, ``y`` and ``state`` are checked first
        (:class:`InvalidSampleError`, nothing changed). On a non-finite output without
        ``y`` raises :class:`NonFinitePredictionError`; on a non-finite loss, gradient or
        updated weights :class:`NonFiniteStepError`; if the computation raised
        :class:`StepFailedError`: in all three the learner is left byte for byte as before.
        """
        layout = self._layout()
        xt = self.check_x(x)
        yt = None if y is None else self.check_y(y)
        state = self._check_stream(state, layout)
        return self._undone_on_failure(lambda: self._stream_step(state, xt, yt, layout))

    def _undone_on_failure(self, step: Callable[[], T]) -> T:
        """Run a stream ``step``; if it fails (rolled back, a non-finite prediction, or it
        raised) the normalizer state it advanced is restored and its gradients cleared."""
        health = self._save_norm_state()
        try:
            return step()
        except LearnerCorruptedError:
            raise
        except (StepRolledBackError, NonFinitePredictionError):
            self._restore_norm_state(health)
            self._clear_grads()
            raise
        except Exception as exc:
            self._restore_norm_state(health)
            self._clear_grads()
            raise _step_failed(exc) from exc

    def _stream_step(
        self, state: StreamState, x: Tensor, y: Tensor | None, layout: StreamLayout
    ) -> tuple[StreamState, StreamResult]:
        network = self.network
        assert isinstance(network, StatefulRNN)
        self._set_training(True)  # the arrival advances the forward statistics, once
        out, arrived = network.advance(x.to(self.device), state.hidden.to(self.device))
        if self.device.type != "cpu":
            arrived = type(arrived)(*(None if t is None else t.cpu() for t in vars(arrived).values()))
        new_state = state.pushed(arrived, layout.bptt)
        if y is None:
            prediction = self._decode(out)[0]  # NonFinitePredictionError if it is not finite
            return new_state, StreamResult(state.t, prediction, None, self.step)
        controls = network.controls()
        loss_value, grad_value = self._window_gradients(new_state, y, controls)
        try:
            prediction = self._decode(out)[0]
        except NonFinitePredictionError as exc:
            raise NonFiniteStepError(f"{exc}; the step was rolled back") from exc
        self._window_update(controls, grad_value, loss_value, prediction.prediction, y)
        return new_state, StreamResult(state.t, prediction, loss_value, self.step)

    def stream_learn(self, window: StreamState, y: Any, served: PredictionValue) -> LearnResult:
        """Learn now from a label that arrived after its time step: ``window`` is the state
        :meth:`stream_step` returned for that step (without ``y``), ``served`` the
        prediction it answered. One optimizer step of truncated BPTT over that window, with
        the current weights, exactly as :meth:`stream_step` would have taken it with ``y``
        (the window keeps each step's arrival statistics, so nothing advances them again);
        ON's control processes advance now, in label order. The metrics score ``served``.
        ``y`` and ``window`` are checked first (:class:`InvalidSampleError`); on a
        non-finite loss, gradient or updated weights :class:`NonFiniteStepError`, and on a
        computation that raised :class:`StepFailedError`, the learner is left byte for byte
        as before."""
        layout = self._layout()
        yt = self.check_y(y)
        window = self._check_stream(window, layout)
        if not window.steps:
            raise InvalidSampleError("the stream state has no time step to learn from")
        network = self.network
        assert isinstance(network, StatefulRNN)

        def learn() -> LearnResult:
            controls = network.controls()
            loss_value, grad_value = self._window_gradients(window, yt, controls)
            self._window_update(controls, grad_value, loss_value, served, yt)
            return LearnResult(step=self.step, loss=loss_value, prediction=served)

        return self._undone_on_failure(learn)

    def _window_gradients(
        self, window: StreamState, y: Tensor, controls: list[Control]
    ) -> tuple[float, float]:
        """The gradients of the loss of ``window``'s last output (truncated BPTT over the
        window), clipped: ``(loss, gradient norm)``, both checked finite (else
        :class:`NonFiniteStepError`, nothing updated yet)."""
        network = self.network
        assert isinstance(network, StatefulRNN)
        self._clear_grads()
        loss_value: float | None = None
        if self._window is not None:  # the NumPy window: the eager one's maths, less dispatch
            target: int | np.ndarray = int(y) if self._classify else y.numpy()
            loss_value = self._window.loss_and_grads(window, target, controls)[0]
        else:
            self._set_training(False)  # the window records no health signal
            with torch.enable_grad():
                window_out = network.window(window, controls)
                loss = self._loss(window_out, y[None].to(self.device))
                loss.backward()
        grad_norm = self._clip_grads()
        if loss_value is None:
            loss_value, grad_value = torch.stack([loss.detach().float(), grad_norm.float()]).tolist()
        else:
            grad_value = float(grad_norm)
        if not (math.isfinite(loss_value) and math.isfinite(grad_value)):
            raise _non_finite(loss_value, grad_value)
        return loss_value, grad_value

    def _window_update(
        self,
        controls: list[Control],
        grad_value: float,
        loss_value: float,
        scored: PredictionValue,
        y: Tensor,
    ) -> None:
        """The optimizer step of a window, then ``u``/``v`` (once per optimizer step, after
        it is certain), the step count and the metrics, which score ``scored``."""
        self._guarded_update(grad_value)
        for control in controls:
            control.commit()
        self.step += 1
        if self._classify:
            score = float(scored == int(y))
        else:
            score = float((torch.as_tensor(scored, dtype=torch.float32) - y).abs().mean())
        self.metrics.update(loss_value, score)

    # --------------------------------------------------------------- inspection
    def layer_names(self) -> list[str]:
        """Names of the ON layers, in forward order."""
        return [name for name, _ in self._norms]

    def metrics_dict(self) -> dict[str, float | int | None]:
        return self.metrics.as_dict()

    def norm_stats(self, layer: str | None = None) -> list[dict[str, Any]]:
        """Per-ON-layer state and health summaries; ``layer`` picks one (``KeyError`` if unknown)."""
        norms = self._norms
        if layer is not None:
            norms = [(n, m) for n, m in norms if n == layer]
            if not norms:
                raise KeyError(f"unknown layer {layer!r}; layers: {self.layer_names()}")
        return [self._layer_stats(name, m) for name, m in norms]

    @staticmethod
    def _layer_stats(name: str, m: OnlineNorm) -> dict[str, Any]:
        mu, var, u, v = (t.detach().double().cpu() for t in (m.mu, m.var, m.u, m.v))
        std = (var + m.eps).sqrt()
        mu_mean, mu_min, mu_max = _summary(mu)
        std_mean, std_min, std_max = _summary(std)
        comp = m.compensation
        return {
            "name": name,
            "num_features": m.num_features,
            "alpha_fwd": m.alpha_fwd,
            "alpha_bkw": m.alpha_bkw,
            "eps": m.eps,
            "ecm": m.ecm,
            "samples_tracked": int(m.num_samples_tracked),
            "mu": mu.tolist(),
            "var": var.tolist(),
            "u": u.tolist(),
            "v": v.tolist(),
            "summary": {
                "mu_mean": mu_mean,
                "mu_min": mu_min,
                "mu_max": mu_max,
                "std_mean": std_mean,
                "std_min": std_min,
                "std_max": std_max,
                "u_mean": float(u.mean()),
                "u_abs_max": float(u.abs().max()),
                "v_mean": float(v.mean()),
                "v_abs_max": float(v.abs().max()),
            },
            "ls_rms": comp.last_rms() if isinstance(comp, LayerScaling) else None,
            "clamped_fraction": comp.last_clamped_fraction() if isinstance(comp, ActivationClamp) else None,
        }

    # -------------------------------------------------------------- persistence
    def state_bytes(self) -> bytes:
        """Weights, optimizer state, ON buffers, step and metrics; safetensors + JSON."""
        opt_tensors, opt_meta = optimizer_to_parts(self.optimizer.state_dict())
        tensors = {**prefixed(self.network.state_dict(), "net."), **prefixed(opt_tensors, "opt.")}
        meta = {
            "format": STATE_FORMAT,
            "spec": self.spec.model_dump(mode="json"),
            "step": self.step,
            "metrics": self.metrics.to_json(),
            "optimizer": opt_meta,
        }
        if self.target_scaler is not None:
            target_tensors, meta["target_count"] = self.target_scaler.to_parts()
            tensors |= prefixed(target_tensors, "target.")
        return dump_state(tensors, meta)

    @classmethod
    def from_state_bytes(
        cls, data: bytes, device: str | torch.device = "cpu", path: StepPath = "auto"
    ) -> OnlineLearner:
        """Rebuild a learner that continues exactly like the one that was saved, if it
        takes the same ``path`` (the state does not record it: a learner saved from an
        eager path continues bit for bit with ``path="eager"``)."""
        tensors, meta = _load_checked(data)
        learner = cls(ModelSpec.from_stored(meta["spec"]), device=device, path=path)
        learner._load_parts(tensors, meta)
        return learner

    def load_state_bytes(self, data: bytes) -> None:
        """Replace this learner's whole state with a saved one of the same spec, in place:
        afterwards it continues exactly as :meth:`from_state_bytes` of ``data`` would,
        without building a new network and optimizer."""
        tensors, meta = _load_checked(data)
        spec = ModelSpec.from_stored(meta["spec"])
        if spec != self.spec:
            raise ValueError(f"the state is of another spec ({spec.name!r}), not this learner's")
        self._load_parts(tensors, meta)

    def _load_parts(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        target = None
        if self.target_scaler is not None:  # checked before anything is loaded
            target = TargetScaler.from_parts(
                self.spec.output_size, unprefixed(tensors, "target."), meta.get("target_count")
            )
        self.network.load_state_dict(unprefixed(tensors, "net."), strict=True)
        self.optimizer.load_state_dict(optimizer_from_parts(unprefixed(tensors, "opt."), meta["optimizer"]))
        self.step = int(meta["step"])
        self.metrics = PrequentialMetrics.from_json(meta["metrics"])
        if target is not None:
            self.target_scaler = target
        self._guard.reset()  # new weights: the update bounds start again from a measure
        for module in self._health:  # diagnostics of the last forward: a fresh learner has none
            _set_health_record(module, None)
        self._clear_grads()


def _load_checked(data: bytes) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors, meta = load_state(data)
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"unsupported state format {meta.get('format')!r}")
    return tensors, meta
