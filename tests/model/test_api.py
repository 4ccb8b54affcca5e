"""The layers' public surface: reset, repr, device neutrality, and errors that name the problem."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from model import LayerScaling, OnlineNorm, OnlineNorm1d, OnlineNorm2d, online_norm
from tests.model.helpers import C, make_grad, make_input, rng_for

MODEL_DIR = Path(__file__).resolve().parents[2] / "model"


def test_public_api() -> None:
    """The names the rest of the project imports are exported."""
    import model

    for name in (
        "OnlineNorm",
        "OnlineNorm1d",
        "OnlineNorm2d",
        "LayerScaling",
        "ActivationClamp",
        "online_norm",
    ):
        assert name in model.__all__ and hasattr(model, name)
    assert online_norm is model.functional.online_norm


@pytest.mark.parametrize("warmup", [False, True], ids=["const", "warmup"])
def test_reset_running_stats_restores_the_prior(warmup: bool) -> None:
    """After training, ``reset_running_stats`` gives mu=0, var=1, u=v=0, nothing seen."""
    mod = OnlineNorm2d(C, alpha_fwd=0.9, alpha_bkw=0.9, warmup=warmup)
    rng = rng_for("reset", warmup)
    with torch.no_grad():
        mod.weight.fill_(1.7)
    for _ in range(2):
        x = torch.tensor(make_input(rng, 4, (2, 2)), dtype=torch.float32, requires_grad=True)
        mod(x).backward(torch.tensor(make_grad(rng, 4, (2, 2)), dtype=torch.float32))
    for name in ("mu", "u", "v"):
        assert torch.count_nonzero(getattr(mod, name)) > 0, name
    assert not torch.equal(mod.var, torch.ones(C))
    mod.reset_running_stats()
    assert torch.equal(mod.mu, torch.zeros(C))
    assert torch.equal(mod.var, torch.ones(C))
    assert torch.equal(mod.u, torch.zeros(C))
    assert torch.equal(mod.v, torch.zeros(C))
    assert int(mod.num_samples_tracked) == 0
    assert float(mod.weight.detach()[0]) == pytest.approx(1.7)  # parameters are not state
    mod.reset_parameters()
    assert torch.equal(mod.weight.detach(), torch.ones(C)) and torch.equal(mod.bias.detach(), torch.zeros(C))


def test_initial_state_and_buffers() -> None:
    """A fresh layer holds the prior and registers exactly the documented buffers."""
    mod = OnlineNorm1d(C)
    names = {name for name, _ in mod.named_buffers()}
    assert names == {"mu", "var", "u", "v", "num_samples_tracked"}
    assert torch.equal(mod.mu, torch.zeros(C)) and torch.equal(mod.var, torch.ones(C))
    assert mod.num_samples_tracked.dtype == torch.long
    assert set(mod.state_dict()) >= {"mu", "var", "u", "v", "num_samples_tracked", "weight", "bias"}
    assert OnlineNorm1d(C, affine=False).weight is None


def test_extra_repr_shows_hyperparameters() -> None:
    """The repr names every hyper-parameter with its value (the ECM's in its submodule)."""
    mod = OnlineNorm1d(7, alpha_fwd=0.875, alpha_bkw=0.625, eps=1e-3, affine=False, ecm="ac", clamp_val=3.5)
    text = repr(mod)
    assert mod.extra_repr().startswith("7, ")
    for part in ("alpha_fwd=0.875", "alpha_bkw=0.625", "eps=0.001", "affine=False", "ecm='ac'"):
        assert part in mod.extra_repr(), part
    assert "warmup=False" in mod.extra_repr()
    assert "clamp_val=3.5" in text
    ls = OnlineNorm2d(2, ecm="ls", ls_eps=1e-4, warmup=True)
    assert "ecm='ls'" in ls.extra_repr() and "warmup=True" in ls.extra_repr()
    assert "eps=0.0001" in repr(ls.compensation)
    assert "ecm=None" in OnlineNorm(2, ecm=None).extra_repr()


def test_model_source_has_no_cuda_calls() -> None:
    """Device placement belongs to the caller: no hard-coded ``.cuda()`` in model/."""
    sources = sorted(MODEL_DIR.rglob("*.py"))
    assert sources, f"no sources found under {MODEL_DIR}"
    offenders = [
        f"{path.name}:{i}"
        for path in sources
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.cuda\s*\(", line)
    ]
    assert not offenders, f".cuda() found at {offenders}"


def test_layer_follows_module_to() -> None:
    """Buffers and parameters follow ``.to()``, so the layer works wherever it is moved."""
    mod = OnlineNorm1d(C).to("cpu")
    assert all(t.device.type == "cpu" for t in (*mod.buffers(), *mod.parameters()))
    out = mod(torch.tensor(make_input(rng_for("to"), 2, ()), dtype=torch.float32))
    assert out.shape == (2, C)


# -- errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "shape", "message"),
    [
        (OnlineNorm1d, (2, C, 4, 4), "OnlineNorm1d expected 2D or 3D input (got 4D input)"),
        (OnlineNorm1d, (C,), "OnlineNorm1d expected 2D or 3D input (got 1D input)"),
        (OnlineNorm2d, (2, C, 4), "OnlineNorm2d expected 4D input (got 3D input)"),
        (OnlineNorm2d, (2, C, 4, 4, 4), "OnlineNorm2d expected 4D input (got 5D input)"),
        (OnlineNorm, (C,), "OnlineNorm expected at least 2D input (got 1D input)"),
    ],
)
def test_wrong_rank_is_named(cls: type[OnlineNorm], shape: tuple[int, ...], message: str) -> None:
    """Wrong rank: the message says what was expected and what came."""
    mod = cls(C)
    with pytest.raises(ValueError, match=re.escape(message)):
        mod(torch.zeros(shape))
    assert int(mod.num_samples_tracked) == 0 and torch.equal(mod.mu, torch.zeros(C))


@pytest.mark.parametrize(
    ("cls", "shape"), [(OnlineNorm1d, (2, 5)), (OnlineNorm1d, (2, 2, 6)), (OnlineNorm2d, (2, 4, 3, 3))]
)
def test_wrong_channel_count_is_named(cls: type[OnlineNorm], shape: tuple[int, ...]) -> None:
    """Wrong C: the message names the expected channel count and the shape received."""
    with pytest.raises(
        ValueError, match=re.escape(f"expected {C} channels in dim 1 (got input of shape {shape})")
    ):
        cls(C)(torch.zeros(shape))


@pytest.mark.parametrize(("cls", "shape"), [(OnlineNorm1d, (0, C)), (OnlineNorm2d, (0, C, 2, 2))])
def test_empty_batch_is_named(cls: type[OnlineNorm], shape: tuple[int, ...]) -> None:
    """An empty batch has nothing to normalize: refused, with the shape, state untouched."""
    mod = cls(C)
    with pytest.raises(ValueError, match=r"non-empty batch .*" + re.escape(str(shape))):
        mod(torch.zeros(shape))
    assert int(mod.num_samples_tracked) == 0


@pytest.mark.parametrize("name", ["alpha_fwd", "alpha_bkw"])
@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, 1.5, float("nan")])
def test_bad_alpha_is_refused(name: str, value: float) -> None:
    """Decays must lie strictly in (0, 1): 1 would freeze the state, 0 forget everything."""
    with pytest.raises(ValueError, match=re.escape(f"{name} must lie in (0, 1)")):
        OnlineNorm1d(C, **{name: value})


@pytest.mark.parametrize("value", [0.0, -1e-5, float("nan")])
def test_bad_eps_is_refused(value: float) -> None:
    """``eps`` guards the square root: it must be a positive number."""
    with pytest.raises(ValueError, match="eps must be positive"):
        OnlineNorm1d(C, eps=value)


@pytest.mark.parametrize("value", ["bn", "LS", "", 0])
def test_bad_ecm_is_refused(value: object) -> None:
    """Only the three documented error-compensation modes exist."""
    with pytest.raises(ValueError, match=r"ecm must be 'ls', 'ac' or None \(got " + re.escape(repr(value))):
        OnlineNorm1d(C, ecm=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "message"), [({"clamp_val": 0.0}, "clamp_val must be positive")])
def test_bad_clamp_is_refused(kwargs: dict, message: str) -> None:
    """A non-positive clamp would zero every activation."""
    with pytest.raises(ValueError, match=message):
        OnlineNorm1d(C, ecm="ac", **kwargs)


@pytest.mark.parametrize("value", [0, -3])
def test_bad_num_features_is_refused(value: int) -> None:
    """At least one channel."""
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        OnlineNorm1d(value)


def test_layer_scaling_module_is_per_sample() -> None:
    """Layer scaling of a batch equals layer scaling of each sample alone."""
    h = torch.tensor(np.random.default_rng(3).normal(1.0, 2.0, (4, C, 5)))
    mod = LayerScaling()
    whole = mod(h)
    torch.testing.assert_close(whole, torch.cat([mod(h[i : i + 1]) for i in range(4)]))
