"""The JSON model spec (contract of DESIGN.md), validated with pydantic.

Only ``name``, ``task``, ``input_shape`` and the output size are required; every other
field has a default chosen by ``benchmarks/bench_quality.py`` to learn well from the
first samples of raw, unscaled features.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
#: Upper bounds that keep one model's memory and step time sane.
MAX_INPUT_SIZE = 1 << 20
MAX_WIDTH = 8192
MAX_LAYERS = 16
MAX_CLASSES = 100_000
MAX_BPTT = 256
#: Stateful rnn defaults, chosen by ``benchmarks/bench_streams.py``: within 0.01 of the
#: best of its sweep on recall and one-step forecasting, at 3.2 KB per stream (hidden
#: [128, 64] with bptt 16 forecast worse than persistence, at 37.7 KB per stream).
STATEFUL_HIDDEN = (32,)
STATEFUL_BPTT = 8
#: Bounds of the hyper-parameters: far outside the useful ranges, inside those where a
#: step stays finite in float32 (a weight decay of 1e308 turns every weight into NaN).
MIN_EPS, MAX_EPS = 1e-12, 1.0
MAX_CLAMP = 1e3
MAX_WEIGHT_DECAY = 1.0
MAX_CLIP = 1e6
_WIDTHS_SCHEMA = {"maxItems": MAX_LAYERS, "items": {"type": "integer", "minimum": 1, "maximum": MAX_WIDTH}}


#: Fields added after specs were first stored, with the value a stored spec without them
#: means: how the model behaved before the field existed (``ModelSpec.from_stored``). It
#: must be listed where that differs from today's default (``target_norm``); a field whose
#: default still behaves so (``input_clamp``) is listed too, so its default can change.
STORED_DEFAULTS: dict[tuple[str, str], Any] = {
    ("network", "input_clamp"): None,
    ("network", "target_norm"): "none",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkSpec(_Strict):
    """The network body. ``kind`` defaults by the rank of ``input_shape``."""

    kind: Literal["mlp", "cnn", "rnn"] | None = Field(
        None, description="mlp for [F], rnn for [T, F], cnn for [C, H, W]; inferred when omitted"
    )
    hidden: list[int] = Field(
        default_factory=lambda: [128, 64],
        description="mlp: widths of the hidden layers; rnn: hidden size of each stacked layer "
        "(default [128, 64]; [32] for a stateful rnn)",
        json_schema_extra=_WIDTHS_SCHEMA,
    )
    channels: list[int] = Field(
        default_factory=lambda: [16, 32],
        description="cnn: channels per block",
        json_schema_extra=_WIDTHS_SCHEMA,
    )
    skip: bool = Field(
        True,
        description="mlp: add a linear path from the standardized inputs to the output (wide & deep): "
        "it learns fast from the first samples while the deep path catches up",
    )
    stateful: bool = Field(
        False,
        description="rnn only: one time step per call, with a hidden state kept per stream by the service "
        "(input_shape [F]); false: each sample is a whole [T, F] sequence",
    )
    bptt: int = Field(
        STATEFUL_BPTT,
        ge=1,
        le=MAX_BPTT,
        description="stateful rnn: a labelled step learns by truncated backpropagation through the "
        "stream's last bptt steps",
    )
    input_norm: Literal["online", "none"] = Field(
        "online",
        description="standardize raw inputs with a (warmed-up) Online Normalization, so feature "
        "scales do not matter; applies whatever norm.kind is",
    )
    input_clamp: float | None = Field(
        None,
        gt=0.0,
        le=MAX_CLAMP,
        description="input_norm online: clamp the standardized inputs to +-input_clamp, so the "
        "first samples (seen before the standardizer's estimates settle) cannot reach the "
        "network thousands of standard deviations wide; null: no clamp",
    )
    target_norm: Literal["running", "none"] | None = Field(
        None,
        description="regression: train on the targets standardized by their running mean and "
        "deviation (of the targets before each one) and predict back in their units, so target "
        "scales do not matter; 'none': raw targets. Default: 'running' for regression (not for a "
        "stateful rnn), 'none' otherwise",
    )

    @model_validator(mode="before")
    @classmethod
    def _stateful_hidden(cls, data: object) -> object:
        """A stateful rnn's hidden sizes default to its own (smaller) ones."""
        if isinstance(data, dict) and data.get("stateful") is True and "hidden" not in data:
            return {**data, "hidden": list(STATEFUL_HIDDEN)}
        return data

    @field_validator("hidden", "channels")
    @classmethod
    def _widths(cls, widths: list[int]) -> list[int]:
        if len(widths) > MAX_LAYERS:
            raise ValueError(f"at most {MAX_LAYERS} layers (got {len(widths)})")
        for w in widths:
            if not 1 <= w <= MAX_WIDTH:
                raise ValueError(f"layer widths must be between 1 and {MAX_WIDTH} (got {w})")
        return widths


class NormSpec(_Strict):
    """Normalization of the hidden layers: ``online`` (ON), ``layer`` (LayerNorm) or ``none``."""

    kind: Literal["online", "layer", "none"] = "online"
    alpha_fwd: float = Field(0.999, gt=0.0, lt=1.0)
    alpha_bkw: float = Field(0.99, gt=0.0, lt=1.0)
    eps: float = Field(1e-5, ge=MIN_EPS, le=MAX_EPS)
    ecm: Literal["ls", "ac"] | None = "ls"
    ls_eps: float = Field(1e-5, ge=MIN_EPS, le=MAX_EPS)
    clamp_val: float = Field(5.0, gt=0.0, le=MAX_CLAMP)
    ls_group_size: int | None = Field(
        None,
        ge=1,
        le=MAX_WIDTH,
        description="ecm 'ls': features per group whose RMS layer scaling divides by (as in the "
        "authors' code); null: all of a layer's features form one group",
    )
    warmup: bool = Field(True, description="exact running means for the first 1/(1-alpha_fwd) samples")


class OptimizerSpec(_Strict):
    kind: Literal["sgd", "adam"] = "adam"
    lr: float = Field(0.003, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    betas: tuple[float, float] = Field(
        (0.9, 0.999),
        description="adam only",
        json_schema_extra={"items": {"type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0}},
    )
    weight_decay: float = Field(0.0, ge=0.0, le=MAX_WEIGHT_DECAY)
    skip_lr_scale: float = Field(
        5.0, gt=0.0, le=100.0, description="learning-rate multiplier of the mlp's linear skip path"
    )
    clip_grad_norm: float | None = Field(
        5.0, gt=0.0, le=MAX_CLIP, description="per-step gradient norm cap; null: none"
    )

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1) (got {list(betas)})")
        return betas


class ModelSpec(_Strict):
    """A model: what it predicts from what, and how it learns."""

    name: str = Field(
        ..., description=f"unique, matching {NAME_PATTERN}", json_schema_extra={"pattern": NAME_PATTERN}
    )
    task: Literal["classification", "regression"]
    input_shape: list[int] = Field(
        ...,
        min_length=1,
        max_length=3,
        description=f"at most {MAX_INPUT_SIZE} elements in all",
        json_schema_extra={"items": {"type": "integer", "minimum": 1, "maximum": MAX_INPUT_SIZE}},
    )
    num_classes: int | None = Field(
        None,
        description=f"classification only, 2 to {MAX_CLASSES}",
        json_schema_extra={"minimum": 2, "maximum": MAX_CLASSES},
    )
    output_dim: int | None = Field(
        None,
        description=f"regression only, 1 to {MAX_WIDTH}, default 1",
        json_schema_extra={"minimum": 1, "maximum": MAX_WIDTH},
    )
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    norm: NormSpec = Field(default_factory=NormSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    seed: int = Field(0, ge=0, lt=2**63)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid model name {name!r}: must match {NAME_PATTERN}")
        return name

    @field_validator("input_shape")
    @classmethod
    def _input_shape(cls, shape: list[int]) -> list[int]:
        if any(d < 1 for d in shape):
            raise ValueError(f"input_shape dimensions must be positive (got {shape})")
        if math.prod(shape) > MAX_INPUT_SIZE:
            raise ValueError(f"input_shape {shape} has more than {MAX_INPUT_SIZE} elements")
        return shape

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.task == "classification":
            if self.num_classes is None:
                raise ValueError("classification needs num_classes")
            if not 2 <= self.num_classes <= MAX_CLASSES:
                raise ValueError(f"num_classes must be between 2 and {MAX_CLASSES} (got {self.num_classes})")
            if self.output_dim is not None:
                raise ValueError("output_dim is for regression; classification uses num_classes")
        else:
            if self.num_classes is not None:
                raise ValueError("num_classes is for classification; regression uses output_dim")
            if self.output_dim is not None and not 1 <= self.output_dim <= MAX_WIDTH:
                raise ValueError(f"output_dim must be between 1 and {MAX_WIDTH} (got {self.output_dim})")
        kind = self.network_kind
        if self.network.kind is None:  # resolved once, so every reader of the spec sees it
            object.__setattr__(self, "network", self.network.model_copy(update={"kind": kind}))
        self._resolve_target_norm()
        if self.network.stateful and kind != "rnn":
            raise ValueError(f"network.stateful is for rnn (got network.kind {kind!r})")
        rank = {"mlp": None, "rnn": 1 if self.network.stateful else 2, "cnn": 3}[kind]
        if rank is not None and len(self.input_shape) != rank:
            raise ValueError(
                f"network.kind {kind!r} needs input_shape of rank {rank} (got {self.input_shape})"
                + (": a stateful rnn takes one time step [F] per call" if self.network.stateful else "")
            )
        group = self.norm.ls_group_size
        if group is not None:
            widths = self.network.channels if kind == "cnn" else self.network.hidden
            bad = [w for w in widths if w % group]
            if bad:
                raise ValueError(f"norm.ls_group_size {group} must divide every hidden width (not {bad})")
        return self

    def _resolve_target_norm(self) -> None:
        regression, stateful = self.task == "regression", self.network.stateful
        target_norm = self.network.target_norm
        if target_norm is None:  # resolved once, as network.kind: stored specs keep what they meant
            target_norm = "running" if regression and not stateful else "none"
            object.__setattr__(self, "network", self.network.model_copy(update={"target_norm": target_norm}))
        elif target_norm == "running" and not regression:
            raise ValueError("network.target_norm 'running' is for regression (classes are not scaled)")
        elif target_norm == "running" and stateful:
            raise ValueError("network.target_norm 'running' is not supported by a stateful rnn")

    @classmethod
    def from_stored(cls, data: str | bytes | Mapping[str, Any]) -> ModelSpec:
        """A spec as it was stored (a full dump, JSON or parsed): a field the dump lacks
        was added after it was stored, and takes the value that reproduces how the model
        behaved then (:data:`STORED_DEFAULTS`), not today's default, so a stored model
        replays as it ran."""
        raw = json.loads(data) if isinstance(data, str | bytes) else data
        if not isinstance(raw, Mapping):
            raise ValueError("a stored spec must be a JSON object")
        filled = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
        for (section, name), value in STORED_DEFAULTS.items():
            part = filled.setdefault(section, {})
            if isinstance(part, dict):
                part.setdefault(name, value)
        return cls.model_validate(filled)

    @property
    def network_kind(self) -> Literal["mlp", "cnn", "rnn"]:
        """The network kind, inferred from the input rank when the spec leaves it out."""
        if self.network.kind is not None:
            return self.network.kind
        if self.network.stateful:
            return "rnn"
        return {1: "mlp", 2: "rnn", 3: "cnn"}[len(self.input_shape)]  # type: ignore[return-value]

    @property
    def output_size(self) -> int:
        """Width of the network's last layer: classes, or regression outputs."""
        if self.task == "classification":
            assert self.num_classes is not None
            return self.num_classes
        return self.output_dim or 1

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)
