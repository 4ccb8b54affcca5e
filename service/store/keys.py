"""Every Redis key the service uses, one function each (DESIGN.md's key schema).

``p`` is the configured key prefix; ``name`` a validated model name.
"""

from __future__ import annotations


def models_key(p: str) -> str:
    """Set of model names: the only way models are listed (never KEYS/SCAN)."""
    return f"{p}:models"


def spec_key(p: str, name: str) -> str:
    """String: the model spec, JSON."""
    return f"{p}:model:{name}:spec"


def log_key(p: str, name: str) -> str:
    """Stream: the write-ahead log of accepted samples not yet in a snapshot."""
    return f"{p}:model:{name}:log"


def snapshot_key(p: str, name: str) -> str:
    """Hash: learner state bytes, step, last applied log id, timestamps."""
    return f"{p}:model:{name}:snapshot"


def norm_key(p: str, name: str, layer: str) -> str:
    """Hash: one ON layer's latest ``mu``, ``var``, ``u``, ``v``, step, summary."""
    return f"{p}:model:{name}:norm:{layer}"


def stats_key(p: str, name: str) -> str:
    """Stream, capped: history of per-layer summaries."""
    return f"{p}:model:{name}:stats"


def model_keys(p: str, name: str, layers: list[str]) -> list[str]:
    """All keys one model owns, for deletion."""
    return [
        spec_key(p, name),
        log_key(p, name),
        snapshot_key(p, name),
        stats_key(p, name),
        *(norm_key(p, name, layer) for layer in layers),
    ]
