"""Stateful rnn streams: one time step per call, a hidden state per stream."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/models/{name}/streams", tags=["streams"])
