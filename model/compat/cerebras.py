"""Drop-in for the authors' PyTorch package (``online_norm_pytorch``, Cerebras Systems).

Their package needs a C++/CUDA extension that no longer builds on current PyTorch. These
classes take their constructors, defaults and ``ecm`` spellings, and read and write their
``state_dict`` keys, on top of :class:`model.layers.OnlineNorm`, whose own API stays as
it is. The maths is the same algorithm (their kernel's loop), so a checkpoint trained
with their code continues here, and one saved here loads into theirs.

Written from their documented API and module layout; no code of theirs is copied.

Differences, on purpose:

* ``batch_size`` is accepted (positionally, as theirs) and checked, but unused: our layer
  is batch-size agnostic, any batch runs the exact sequential recurrences. Their batched
  variant (``Norm1dBatched``, deprecated by them) keeps other buffers; only the
  checkpoints of their kernel (``batch_size`` ``None`` or 1, their default) map here.
* ``ecm=None`` is accepted besides their ``''``; an unknown ``ecm`` string means no
  compensation, as in theirs, with a warning naming it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from model import layers

#: our buffer name -> the authors' (under their ``norm`` submodule)
_THEIR_KEYS = {"mu": "norm.m", "var": "norm.var", "u": "norm.u", "v": "norm.v"}
_OUR_KEYS = {theirs: ours for ours, theirs in _THEIR_KEYS.items()}


def parse_ecm(ecm: str | None) -> layers.Ecm:
    """Their spelling (``'ls'``, ``'ac'``, ``''`` for none; any case) -> ours."""
    if ecm is None:
        return None
    if not isinstance(ecm, str):
        raise TypeError(f"ecm must be a string ('ls', 'ac' or '') or None (got {type(ecm).__name__})")
    key = ecm.lower()
    if key in ("ls", "ac"):
        return key  # type: ignore[return-value]
    if key not in ("", "none"):
        warnings.warn(
            f"ecm {ecm!r} is not 'ls' or 'ac': no error compensation (as in the authors' code)",
            stacklevel=3,
        )
    return None


def _group_size(kwargs: dict[str, Any]) -> int | None:
    """Their layer-scaling ``group_size`` keyword (``-1``: one group); nothing else is taken."""
    group_size = kwargs.pop("group_size", -1)
    if kwargs:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    if group_size == -1 or group_size is None:
        return None
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be -1 or a positive integer (got {group_size!r})")
    return group_size


def to_cerebras_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint of a network built with our layers, under the authors' ON keys.

    Every module with a ``num_samples_tracked`` entry is an ON layer: its ``mu``,
    ``var``, ``u``, ``v`` become ``norm.m``, ``norm.var``, ``norm.u``, ``norm.v`` and its
    sample count is dropped (they keep none).
    """
    suffix = "num_samples_tracked"
    owners = {k[: -len(suffix)] for k in state_dict if k == suffix or k.endswith("." + suffix)}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        owner, _, name = key.rpartition(".")
        owner = f"{owner}." if owner else ""
        if owner in owners and name == suffix:
            continue
        if owner in owners and name in _THEIR_KEYS:
            key = owner + _THEIR_KEYS[name]
        out[key] = value
    return out


def from_cerebras_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the authors' ON buffers (``*norm.m``, ``*norm.var``, ...) to ours.

    A layer's keys are renamed only when all four are present, so an unrelated
    ``norm.var`` is left alone.
    """
    owners = {}
    for key in state_dict:
        for theirs in _OUR_KEYS:
            if key == theirs or key.endswith("." + theirs):
                owners.setdefault(key[: len(key) - len(theirs)], set()).add(theirs)
    complete = {owner for owner, found in owners.items() if len(found) == len(_OUR_KEYS)}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for owner in complete:
            rest = key[len(owner) :]
            if key.startswith(owner) and rest in _OUR_KEYS:
                key = owner + _OUR_KEYS[rest]
                break
        out[key] = value
    return out


class _NormView:
    """``layer.norm``: their submodule's attributes (``m``, ``var``, ``u``, ``v``,
    ``afwd``, ``abkw``, ``eps``), read from our layer, for code that reads them."""

    def __init__(self, layer: layers.OnlineNorm) -> None:
        self._layer = layer

    m = property(lambda self: self._layer.mu)
    var = property(lambda self: self._layer.var)
    u = property(lambda self: self._layer.u)
    v = property(lambda self: self._layer.v)
    afwd = property(lambda self: self._layer.alpha_fwd)
    abkw = property(lambda self: self._layer.alpha_bkw)
    eps = property(lambda self: self._layer.eps)


class _CerebrasAPI(layers.OnlineNorm):
    """The authors' constructor and checkpoint keys over our layer (see the module doc)."""

    def __init__(
        self,
        num_features: int,
        batch_size: int | None = None,
        alpha_fwd: float = 0.999,
        alpha_bkw: float = 0.99,
        eps: float = 1e-05,
        affine: bool = True,
        ecm: str | None = "ac",
        ls_eps: float = 1e-05,
        clamp_val: float = 5,
        **kwargs: Any,
    ) -> None:
        bad_batch = isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        if batch_size is not None and bad_batch:
            raise ValueError(f"batch_size must be None or a positive integer (got {batch_size!r})")
        ours = parse_ecm(ecm)
        group_size = _group_size(dict(kwargs))
        super().__init__(
            num_features,
            alpha_fwd=alpha_fwd,
            alpha_bkw=alpha_bkw,
            eps=eps,
            affine=affine,
            ecm=ours,
            ls_eps=ls_eps,
            clamp_val=float(clamp_val),
            ls_group_size=group_size if ours == "ls" else None,
        )
        self.batch_size = batch_size  #: accepted for their signature; any batch size runs
        # their checkpoints have no sample count (it only matters for our warm-up, off here)
        self._non_persistent_buffers_set.add("num_samples_tracked")
        self.register_state_dict_post_hook(_save_their_keys)
        self.register_load_state_dict_pre_hook(_load_their_keys)

    @property
    def norm(self) -> _NormView:
        """Their ``norm`` submodule's state and constants (read-only view)."""
        return _NormView(self)


def _save_their_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, _meta: Any) -> None:
    """State-dict post hook: ``mu`` -> ``norm.m`` and so on, in place."""
    for ours, theirs in _THEIR_KEYS.items():
        if prefix + ours in state_dict:
            state_dict[prefix + theirs] = state_dict.pop(prefix + ours)


def _load_their_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_args: Any) -> None:
    """Load-state-dict pre hook: accept their keys (and ours), in place."""
    for theirs, ours in _OUR_KEYS.items():
        if prefix + theirs in state_dict:
            state_dict[prefix + ours] = state_dict.pop(prefix + theirs)


class OnlineNorm1d(_CerebrasAPI, layers.OnlineNorm1d):
    """The authors' ``OnlineNorm1d(num_features, batch_size=None, alpha_fwd=0.999,
    alpha_bkw=0.99, eps=1e-05, affine=True, ecm='ac', ls_eps=1e-05, clamp_val=5,
    group_size=-1)`` over ``(N, C)`` (or ``(N, C, L)``) inputs.

    ``batch_size`` is accepted and ignored: this layer is batch-size agnostic (every
    batch runs the exact sequential recurrences), so batches of any size may follow.
    ``ecm``: ``'ls'``, ``'ac'`` (their default) or ``''`` for none, any case;
    ``group_size`` (with ``'ls'``): channels per layer-scaling group, ``-1`` all.
    ``state_dict`` keys are theirs: ``norm.m``, ``norm.var``, ``norm.u``, ``norm.v``,
    ``weight``, ``bias``; ours (``mu``, ...) load too.
    """


class OnlineNorm2d(_CerebrasAPI, layers.OnlineNorm2d):
    """The authors' ``OnlineNorm2d`` over ``(N, C, H, W)`` inputs: same constructor,
    defaults and keys as :class:`OnlineNorm1d` (batch-size agnostic too)."""


class LayerScaling(layers.LayerScaling):
    """Their ``LayerScaling(group_size=-1, eps=1e-5)``: unit RMS per sample, or per group
    of ``group_size`` channels (with their spatial elements)."""

    def __init__(self, group_size: int = -1, eps: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(eps=eps, group_size=_group_size({"group_size": group_size}))


#: their 1d name for the same module
LayerScaling1d = LayerScaling


class ActivationClamp(layers.ActivationClamp):
    """Their ``ActivationClamp(clamp_value=5)``."""

    def __init__(self, clamp_value: float = 5, **kwargs: Any) -> None:
        super().__init__(float(clamp_value))

    @property
    def clamp_value(self) -> float:
        return self.clamp_val


def load_cerebras_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True) -> Any:
    """Load a checkpoint of a network built with the authors' layers into ``module`` built
    with ours (:mod:`model.layers`): their ON keys are renamed first, and a missing
    sample count keeps the layer's own."""
    renamed = from_cerebras_keys(state_dict)
    for name, sub in module.named_modules():
        if isinstance(sub, layers.OnlineNorm) and not isinstance(sub, _CerebrasAPI):
            key = f"{name}.num_samples_tracked" if name else "num_samples_tracked"
            renamed.setdefault(key, sub.num_samples_tracked.clone())
    return module.load_state_dict(renamed, strict=strict)


__all__ = [
    "ActivationClamp",
    "LayerScaling",
    "LayerScaling1d",
    "OnlineNorm1d",
    "OnlineNorm2d",
    "from_cerebras_keys",
    "load_cerebras_state_dict",
    "parse_ecm",
    "to_cerebras_keys",
]
