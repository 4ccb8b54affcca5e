"""Which live replica should own each model: rendezvous hashing with bounded loads.

Every replica computes the same answer from the same membership and catalog, with no
coordination: each model goes to the replica that ranks it highest (a hash of the
replica id and the model name), unless that replica already has its fair share
(``ceil(models / replicas)``), in which case it goes to the next one in its ranking. So
models spread evenly, and when a replica joins or leaves only a few move. Views that
briefly differ are harmless: the lease decides who actually owns a model.
"""

from __future__ import annotations

import hashlib
import math


def _score(replica: str, model: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{replica}\0{model}".encode(), digest_size=8).digest(), "big")


def assign(models: list[str], replicas: list[str]) -> dict[str, str]:
    """Model -> replica, for every model (empty without replicas)."""
    if not replicas:
        return {}
    cap = math.ceil(len(models) / len(replicas))
    load = dict.fromkeys(replicas, 0)
    out: dict[str, str] = {}
    # A fixed order of models (by hash, not by name) so no replica is favoured by names.
    for model in sorted(models, key=lambda m: (_score("", m), m)):
        for replica in sorted(replicas, key=lambda r: (-_score(r, model), r)):
            if load[replica] < cap:
                out[model] = replica
                load[replica] += 1
                break
    return out
