"""All routes of the API. The hot routers (learn, predict) come first: routes are matched
in order, once per request."""

from fastapi import FastAPI

from service.api.routes import (
    dashboard,
    health,
    history,
    labels,
    learn,
    models,
    predict,
    stats,
    stream,
    streams,
)

ROUTERS = (
    learn.router,
    predict.router,
    labels.router,
    streams.router,
    stats.router,
    history.router,
    stream.router,
    models.router,
    health.router,
    dashboard.router,
)


def include_routes(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)
    dashboard.mount_static(app)
