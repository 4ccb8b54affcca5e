"""Every Redis key the service uses, one function each (DESIGN.md's key schema).

``p`` is the configured key prefix; ``name`` a validated model name. Every key of one
model carries the hash tag ``{name}``, so on a Redis Cluster they all live in one slot
and the model's scripts and transactions never cross slots. The service-wide keys
(catalog, membership, events, the instance marker) are single keys of their own.

The layout before replicas (``{p}:models`` as a set, model keys without a hash tag) is
kept here as ``legacy_*``: :mod:`service.store.migrate` moves such data at start-up.
"""

from __future__ import annotations

#: Replica ids appear in keys and in lease values: hostnames, pids, and ``.:_@-``.
REPLICA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"


# ------------------------------------------------------------------ service-wide
def catalog_key(p: str) -> str:
    """Hash: model name -> its incarnation id. The only way models are listed (never KEYS/SCAN)."""
    return f"{p}:catalog"


def instance_key(p: str) -> str:
    """String: a random id written once. If it vanishes, Redis lost data under us."""
    return f"{p}:instance"


def replicas_key(p: str) -> str:
    """Sorted set: replica id -> when its membership expires (ms, Redis clock)."""
    return f"{p}:replicas"


def replica_key(p: str, replica: str) -> str:
    """Hash, expiring: what one replica says about itself (start time, models owned)."""
    return f"{p}:replica:{replica}"


def events_key(p: str) -> str:
    """Stream, capped: created/deleted/released models and replicas joining or leaving,
    so other replicas react at once instead of at their next poll."""
    return f"{p}:events"


def migration_lock_key(p: str) -> str:
    """String with a TTL: one replica at a time migrates the legacy layout."""
    return f"{p}:migrating"


# --------------------------------------------------------------------- per model
def _model(p: str, name: str) -> str:
    return f"{p}:model:{{{name}}}"


def meta_key(p: str, name: str) -> str:
    """Hash: ``inc`` (incarnation id), ``epoch`` (fencing counter), ``layers``, ``created_at``."""
    return f"{_model(p, name)}:meta"


def spec_key(p: str, name: str) -> str:
    """String: the model spec, JSON."""
    return f"{_model(p, name)}:spec"


def log_key(p: str, name: str) -> str:
    """Stream: the write-ahead log of accepted requests not yet in a snapshot; also the
    queue through which any replica hands learns to the owner."""
    return f"{_model(p, name)}:log"


def snapshot_key(p: str, name: str) -> str:
    """Hash: learner state bytes, step, last applied log id, timestamps."""
    return f"{_model(p, name)}:snapshot"


def norm_key(p: str, name: str, layer: str) -> str:
    """Hash: one ON layer's latest ``mu``, ``var``, ``u``, ``v``, step, summary."""
    return f"{_model(p, name)}:norm:{layer}"


def stats_key(p: str, name: str) -> str:
    """Stream, capped: history of per-layer summaries."""
    return f"{_model(p, name)}:stats"


def lease_key(p: str, name: str) -> str:
    """Hash with a TTL: the owner's ``token`` and ``replica``. Owner writes check the token."""
    return f"{_model(p, name)}:lease"


def idempotency_key(p: str, name: str) -> str:
    """Hash: Idempotency-Key -> its record, as of the snapshot (later ones are in the log)."""
    return f"{_model(p, name)}:idem"


def results_key(p: str, name: str) -> str:
    """Stream, trimmed by age: outcomes the owner applied for requests other replicas wait on."""
    return f"{_model(p, name)}:results"


def bell_key(p: str, name: str) -> str:
    """List, capped: the entries non-owners appended to the log (each with the id before
    it), pushed to wake the owner and spare it reading the log."""
    return f"{_model(p, name)}:bell"


def pending_key(p: str, name: str) -> str:
    """Hash: per prediction made with ``label_later``, ``x:<id>`` (its input, JSON) and
    ``p:<id>`` (what was served: prediction, probabilities, step; JSON)."""
    return f"{_model(p, name)}:pending"


def pending_at_key(p: str, name: str) -> str:
    """Sorted set: pending prediction id -> when it was made (ms, Redis clock): expiry
    and the bound evict by it."""
    return f"{_model(p, name)}:pending_at"


def labelled_key(p: str, name: str) -> str:
    """Sorted set: labelled prediction id -> when it was made (ms), kept as long as it
    could have stayed pending, so a second label is told 409 rather than 404."""
    return f"{_model(p, name)}:labelled"


def label_counts_key(p: str, name: str) -> str:
    """Hash: counters ``labelled``, ``expired``, ``evicted`` of delayed labels."""
    return f"{_model(p, name)}:label_counts"


def label_delays_key(p: str, name: str) -> str:
    """List, capped: the latest label delays (ms from prediction to label), newest first."""
    return f"{_model(p, name)}:label_delays"


def label_keys(p: str, name: str) -> list[str]:
    """The keys of delayed labels, in the order the label scripts take them."""
    return [
        pending_key(p, name),
        pending_at_key(p, name),
        labelled_key(p, name),
        label_counts_key(p, name),
        label_delays_key(p, name),
    ]


def model_keys(p: str, name: str, layers: list[str]) -> list[str]:
    """All keys one model owns, meta first (for creation and deletion)."""
    return [
        meta_key(p, name),
        spec_key(p, name),
        snapshot_key(p, name),
        log_key(p, name),
        stats_key(p, name),
        lease_key(p, name),
        idempotency_key(p, name),
        results_key(p, name),
        bell_key(p, name),
        *label_keys(p, name),
        *(norm_key(p, name, layer) for layer in layers),
    ]


# ------------------------------------------------------------------ legacy layout
def legacy_models_key(p: str) -> str:
    """Set of model names (the layout before replicas)."""
    return f"{p}:models"


def legacy_model_keys(p: str, name: str, layers: list[str]) -> dict[str, str]:
    """The legacy keys of one model, by kind."""
    base = f"{p}:model:{name}"
    keys = {kind: f"{base}:{kind}" for kind in ("spec", "log", "snapshot", "stats")}
    keys.update({f"norm:{layer}": f"{base}:norm:{layer}" for layer in layers})
    return keys
