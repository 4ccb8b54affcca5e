"""Online Normalization modules: thin holders of parameters and state.

The maths is in :mod:`model.functional`; these classes register the buffers ``mu``,
``var``, ``u``, ``v`` (names are a contract) and pick the error-compensation module.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from model import functional as F

Ecm = Literal["ls", "ac"] | None
_STATE = ("mu", "var", "u", "v")


class LayerScaling(nn.Module):
    """Scale each sample to unit RMS over all its non-batch elements (ECM ``"ls"``).

    ``group_size``: scale each group of that many contiguous channels (with their
    spatial elements) by its own RMS instead, as the authors' code can; ``None`` is one
    group of all channels. It must divide the channel count of every input.
    """

    def __init__(self, eps: float = 1e-5, group_size: int | None = None) -> None:
        super().__init__()
        if group_size is not None and group_size < 1:
            raise ValueError(f"group_size must be a positive integer or None (got {group_size})")
        self.eps = eps
        self.group_size = group_size
        self.last_mean_sq: Tensor | None = None

    def forward(self, h: Tensor) -> Tensor:
        out, mean_sq = F.layer_scaling(h, self.eps, self.group_size)
        if self.training:  # the health signal follows training steps, not predictions
            self.last_mean_sq = mean_sq.detach()
        return out

    def last_rms(self) -> float | None:
        """Mean RMS before scaling over the last batch: 1 when the estimates are right."""
        if self.last_mean_sq is None:
            return None
        return float(self.last_mean_sq.sqrt().mean())

    def extra_repr(self) -> str:
        return f"eps={self.eps}" + ("" if self.group_size is None else f", group_size={self.group_size}")


class ActivationClamp(nn.Module):
    """Clamp activations to ``[-clamp_val, clamp_val]`` (ECM ``"ac"``)."""

    def __init__(self, clamp_val: float = 5.0) -> None:
        super().__init__()
        if clamp_val <= 0:
            raise ValueError(f"clamp_val must be positive (got {clamp_val})")
        self.clamp_val = clamp_val
        self.last_input: Tensor | None = None

    def forward(self, h: Tensor) -> Tensor:
        if self.training:
            self.last_input = h.detach()
        return F.activation_clamp(h, self.clamp_val)

    def last_clamped_fraction(self) -> float | None:
        """Fraction of the last batch's activations that were clamped."""
        if self.last_input is None:
            return None
        return float((self.last_input.abs() > self.clamp_val).float().mean())

    def extra_repr(self) -> str:
        return f"clamp_val={self.clamp_val}"


class OnlineNorm(nn.Module):
    """Online Normalization over ``(N, C, *S)`` inputs, per channel ``C``.

    Args:
        num_features: ``C``.
        alpha_fwd: decay of the running mean and variance.
        alpha_bkw: decay of the gradient control processes ``u`` and ``v``.
        eps: added to the variance inside the square root.
        affine: learn a per-channel ``weight`` and ``bias``.
        ecm: error compensation after the affine transform: ``"ls"`` (layer
            scaling), ``"ac"`` (activation clamping) or ``None``.
        ls_eps: epsilon of layer scaling.
        clamp_val: bound of activation clamping.
        warmup: start from the prior ``(mu=0, var=1)`` weighted as one sample and decay
            with ``min(alpha_fwd, (t+1)/(t+2))``, so early estimates are exact running
            means. Off by default: the paper's behaviour.
        ls_group_size: with ``ecm="ls"``, scale each group of that many contiguous
            channels by its own RMS (the authors' ``group_size``); ``None``: one group.
        state_dtype: dtype of ``mu``, ``var``, ``u``, ``v``. ``None``: float64 for a
            float64 module, else float32. ``torch.float64`` keeps float64 state (and
            computes the statistics in float64) for float32 or half inputs, and keeps
            it through casts: for raw features far from zero with a small spread,
            where any float32 state drifts to ~1e-4..1e-3 relative error.
    """

    _min_dim = 2
    _max_dim: int | None = None

    def __init__(
        self,
        num_features: int,
        alpha_fwd: float = 0.999,
        alpha_bkw: float = 0.99,
        eps: float = 1e-5,
        affine: bool = True,
        ecm: Ecm = "ls",
        ls_eps: float = 1e-5,
        clamp_val: float = 5.0,
        warmup: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        ls_group_size: int | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be a positive integer (got {num_features})")
        for name, alpha in (("alpha_fwd", alpha_fwd), ("alpha_bkw", alpha_bkw)):
            if not 0.0 < alpha < 1.0:
                raise ValueError(f"{name} must lie in (0, 1) (got {alpha})")
        for name, value in (("eps", eps), ("ls_eps", ls_eps)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive and finite (got {value})")
        if ecm not in ("ls", "ac", None):
            raise ValueError(f"ecm must be 'ls', 'ac' or None (got {ecm!r})")
        if state_dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"state_dtype must be torch.float32, torch.float64 or None (got {state_dtype})")
        if ls_group_size is not None:
            F.ls_groups(num_features, ls_group_size)  # raises unless it divides num_features
        self.num_features = num_features
        self.alpha_fwd = float(alpha_fwd)
        self.alpha_bkw = float(alpha_bkw)
        self.eps = float(eps)
        self.affine = affine
        self.ecm = ecm
        self.warmup = warmup
        self.ls_group_size = ls_group_size
        #: an explicit state dtype, kept through casts (``None``: follow the module's)
        self.fixed_state_dtype = state_dtype
        if state_dtype is None:
            state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        factory = {"device": device, "dtype": state_dtype}
        for name in _STATE:
            self.register_buffer(name, torch.empty(num_features, **factory))
        self.register_buffer("num_samples_tracked", torch.zeros((), dtype=torch.long, device=device))
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.compensation: nn.Module
        if ecm == "ls":
            self.compensation = LayerScaling(ls_eps, ls_group_size)
        elif ecm == "ac":
            self.compensation = ActivationClamp(clamp_val)
        else:
            self.compensation = nn.Identity()
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Back to the prior: ``mu = 0``, ``var = 1``, ``u = v = 0``, nothing seen."""
        self.mu.zero_()
        self.var.fill_(1.0)
        self.u.zero_()
        self.v.zero_()
        self.num_samples_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < self._min_dim or (self._max_dim is not None and x.dim() > self._max_dim):
            raise ValueError(
                f"{type(self).__name__} expected {self._dims_text()} input (got {x.dim()}D input)"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expected {self.num_features} channels in dim 1 "
                f"(got input of shape {tuple(x.shape)})"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{type(self).__name__} expected a non-empty batch (got shape {tuple(x.shape)})")

    def _dims_text(self) -> str:
        if self._max_dim is None:
            return f"at least {self._min_dim}D"
        if self._max_dim == self._min_dim:
            return f"{self._min_dim}D"
        return " or ".join(f"{d}D" for d in range(self._min_dim, self._max_dim + 1))

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        buffers, params = self._buffers, self._parameters  # dict reads: this path is latency-bound
        if self.training:
            state = F.OnlineNormState(
                buffers["mu"],
                buffers["var"],
                buffers["u"],
                buffers["v"],
                buffers["num_samples_tracked"],
                self.warmup,
                self.alpha_fwd,
                self.alpha_bkw,
                self.eps,
            )
            h = F.apply_online_norm(x, params["weight"], params["bias"], state)
        else:
            h = F.online_norm(
                x, self.mu, self.var, self.u, self.v, self.weight, self.bias, training=False, eps=self.eps
            )
        compensation = self.compensation
        return h if isinstance(compensation, nn.Identity) else compensation(h)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        """Keep the state in float32 when the module is cast to half precision.

        The state is kept aside *before* the cast: rounding it through half would lose
        precision and turn variances above 65504 into ``inf``.
        """
        kept = {name: getattr(self, name) for name in _STATE}
        super()._apply(fn, recurse)
        fixed = self.fixed_state_dtype
        for name, old in kept.items():
            buf = getattr(self, name)
            if fixed is not None and buf.dtype != fixed:
                setattr(self, name, old.to(device=buf.device, dtype=fixed))
            elif buf.dtype in (torch.float16, torch.bfloat16):
                setattr(self, name, old.to(device=buf.device, dtype=torch.float32))
        return self

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, "
            f"eps={self.eps}, affine={self.affine}, ecm={self.ecm!r}, warmup={self.warmup}"
            + ("" if self.ls_group_size is None else f", ls_group_size={self.ls_group_size}")
            + ("" if self.fixed_state_dtype is None else f", state_dtype={self.fixed_state_dtype}")
        )


class OnlineNorm1d(OnlineNorm):
    """Online Normalization of ``(N, C)`` or ``(N, C, L)`` inputs."""

    _min_dim = 2
    _max_dim = 3


class OnlineNorm2d(OnlineNorm):
    """Online Normalization of ``(N, C, H, W)`` inputs."""

    _min_dim = 4
    _max_dim = 4
