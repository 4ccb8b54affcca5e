"""Bodies of the watching endpoints: the stats history and the stats event stream
(each event's data is one :class:`HistoryEntry`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LayerPoint(BaseModel):
    """One ON layer at one published step. ``std`` is ``sqrt(var + eps)``, the divisor the
    layer normalizes with; ``*_spread`` is a quantity's standard deviation across channels."""

    name: str
    samples_tracked: int | None = None
    mu_mean: float | None = None
    mu_spread: float | None = None
    mu_min: float | None = None
    mu_max: float | None = None
    std_mean: float | None = None
    std_spread: float | None = None
    std_min: float | None = None
    std_max: float | None = None
    u_mean: float | None = None
    u_spread: float | None = None
    u_abs_max: float | None = None
    v_mean: float | None = None
    v_spread: float | None = None
    v_abs_max: float | None = None
    ls_rms: float | None = Field(None, description="RMS before layer scaling (ecm 'ls'): 1 when healthy")
    clamped_fraction: float | None = Field(None, description="fraction of activations clamped (ecm 'ac')")


class MetricsPoint(BaseModel):
    """The prequential metrics at that step (as ``GET .../metrics`` reports them)."""

    model_config = ConfigDict(extra="allow")

    samples_seen: int
    loss: float | None = None
    loss_ewm: float | None = None
    accuracy: float | None = Field(None, description="classification")
    accuracy_ewm: float | None = Field(None, description="classification")
    mae: float | None = Field(None, description="regression")
    mae_ewm: float | None = Field(None, description="regression")


class HistoryEntry(BaseModel):
    id: str = Field(description="the stats stream entry id; pass it as since= (or Last-Event-ID) to go on")
    step: int
    time: float | None = Field(description="unix seconds when it was published")
    metrics: MetricsPoint | None
    layers: list[LayerPoint]


class HistoryResponse(BaseModel):
    entries: list[HistoryEntry] = Field(description="oldest first")
