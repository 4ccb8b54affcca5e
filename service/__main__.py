"""``python -m service``: serve the API with uvicorn on the configured host and port."""

from __future__ import annotations

import uvicorn

from service.config import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run(
        "service.app:app",
        host=settings.HOST,
        port=settings.PORT,
        log_level=settings.LOG_LEVEL,
        access_log=settings.ACCESS_LOG,
        timeout_graceful_shutdown=10,
        server_header=False,  # one header less to build per answer; nobody reads it
    )


if __name__ == "__main__":
    main()
