"""The HTTP API: routes, request/response schemas, dependencies."""
