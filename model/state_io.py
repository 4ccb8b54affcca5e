"""Learner state as bytes: tensors in safetensors, everything else as JSON metadata.

No pickle anywhere, so a state blob from an untrusted store cannot run code.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import safetensors.torch
from torch import Tensor

_META_KEY = "onlinenorm"


def dump_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> bytes:
    """Serialize tensors (moved to CPU, made contiguous) and JSON metadata."""
    cpu = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
    return safetensors.torch.save(cpu, metadata={_META_KEY: json.dumps(meta)})


def load_state(data: bytes) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Inverse of :func:`dump_state`; raises ``ValueError`` on a malformed blob."""
    if len(data) < 8:
        raise ValueError("state blob is too short to be safetensors")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError("state blob header length exceeds the blob")
    try:
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][_META_KEY])
        tensors = safetensors.torch.load(data)
    except (KeyError, TypeError, json.JSONDecodeError, safetensors.SafetensorError) as exc:
        raise ValueError(f"not an onlinenorm state blob: {exc}") from exc
    return tensors, meta


def optimizer_to_parts(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split a torch optimizer ``state_dict`` into tensors and JSON-able metadata."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"scalars": scalars, "param_groups": state_dict["param_groups"]}


def optimizer_from_parts(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild a torch optimizer ``state_dict`` from :func:`optimizer_to_parts` output."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}{k}": v for k, v in tensors.items()}


def unprefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
