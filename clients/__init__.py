"""onlinenorm's Python SDK: :class:`Client` and :class:`AsyncClient` speak the v1 HTTP
contract (DESIGN.md) and nothing else; ``onlinenorm`` (``clients.cli``) is the CLI."""

from clients._base import DEFAULT_BASE_URL, DEFAULT_BATCH_SIZE, DEFAULT_TIMEOUT, SDK_VERSION
from clients.async_client import AsyncClient
from clients.client import Client
from clients.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    ValidationError,
)
from clients.retry import RetryPolicy
from clients.types import (
    Health,
    LayerStats,
    LearnBatchResult,
    LearnResult,
    Metrics,
    ModelInfo,
    Prediction,
    Replica,
    Stats,
    StreamBatchResult,
    StreamInfo,
    StreamResult,
)

__version__ = SDK_VERSION

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_TIMEOUT",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "Health",
    "InternalServerError",
    "LayerStats",
    "LearnBatchResult",
    "LearnResult",
    "Metrics",
    "ModelInfo",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Prediction",
    "RateLimitError",
    "Replica",
    "RetryPolicy",
    "ServiceUnavailableError",
    "Stats",
    "StreamBatchResult",
    "StreamInfo",
    "StreamResult",
    "ValidationError",
    "__version__",
]
