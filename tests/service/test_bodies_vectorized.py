"""The all-at-once sample check of the learn routes (``bodies._vectorized``) against the
per-sample reference (``bodies._check``, the learner's own ``check_x``/``check_y``): the
same values where it accepts a request, and no acceptance of what the reference refuses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from model.learner import OnlineLearner
from service.api.bodies import _check, _vectorized
from service.errors import InvalidInputError

CLS = OnlineLearner({"name": "c", "task": "classification", "input_shape": [2, 3], "num_classes": 3})
REG = OnlineLearner({"name": "r", "task": "regression", "input_shape": [3], "output_dim": 2})
REG1 = OnlineLearner({"name": "s", "task": "regression", "input_shape": [3]})

ACCEPTED: list[tuple[OnlineLearner, list[list[Any]]]] = [
    (CLS, [[[[1, 2, 3], [4, 5, 6]], 0]]),  # nested, one sample
    (CLS, [[[1, 2, 3, 4, 5, 6], 2.0], [[0.1, -2.5, 3e7, 4, 5, 6], 1]]),  # flat, an integral float
    (CLS, [[[2**40, 1, 1, 1, 1, 1], 1]]),  # a large integer
    (REG, [[[0.5, 1.5, 2.5], [1, 2]], [[1, 2, 3], [0.25, -1e-30]]]),
    (REG1, [[[1, 2, 3], 0.5], [[3, 2, 1], 7]]),
]
REFUSED: list[tuple[OnlineLearner, list[list[Any]]]] = [
    (CLS, [[[1, 2, 3], 0]]),  # too few numbers
    (CLS, [[[1, 2, 3, 4, 5, 6], 3]]),  # label out of range
    (CLS, [[[1, 2, 3, 4, 5, 6], 1.5]]),  # not a class index
    (CLS, [[[1, 2, 3, 4, 5, 1e39], 1]]),  # overflows float32
    (REG, [[[1, 2, 3], 0.5]]),  # one value for two outputs
    (REG, [[[1, 2, "3"], [1, 2]]]),
    (REG1, [[[1, [2], 3], 0.5]]),  # ragged
]


@pytest.mark.parametrize("case", range(len(ACCEPTED)))
def test_accepted_requests_get_the_reference_values(case: int) -> None:
    learner, samples = ACCEPTED[case]
    fast = _vectorized(learner, samples, with_y=True)
    assert fast is not None
    xs, ys = _check(learner, samples, with_y=True, batch=True)
    for got, want in zip(fast[0], xs, strict=True):
        assert torch.equal(learner.check_x(got), want)
    for got, want in zip(fast[1], ys, strict=True):
        assert torch.equal(learner.check_y(got), want)
        if learner.spec.task == "classification":
            assert got == int(want)
        else:
            assert np.array_equal(np.asarray(got, dtype=np.float32).reshape(-1), want.numpy())


@pytest.mark.parametrize("case", range(len(REFUSED)))
def test_what_the_reference_refuses_is_left_to_it(case: int) -> None:
    learner, samples = REFUSED[case]
    with pytest.raises(InvalidInputError):
        _check(learner, samples, with_y=True, batch=True)
    assert _vectorized(learner, samples, with_y=True) is None
