"""Labels that arrive after the prediction: learn from the input that was served."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import WriteAccess

router = APIRouter(prefix="/v1/models/{name}", tags=["labels"], dependencies=[WriteAccess])
