"""The REST API's /docs (Swagger UI) and /redoc (ReDoc) pages with their assets served by the app
itself: FastAPI's defaults load the JavaScript from a CDN, so on a machine without internet (or
behind a strict proxy) /docs is a blank page. The assets come from the `fastapi-offline` wheel;
only its static files are used."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["add_doc_pages"]

ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
PREFIX = "/static/api-docs"


def add_doc_pages(api: FastAPI) -> None:
    """Serve /docs and /redoc from local assets (the app is built with docs_url=None and
    redoc_url=None)."""
    api.mount(PREFIX, StaticFiles(directory=ASSETS), name="api-docs-assets")

    def root(request: Request) -> str:
        # Behind a route prefix (Serve's route_prefix, a proxy), links must carry it.
        return str(request.scope.get("root_path", "")).rstrip("/")

    @api.get("/docs", include_in_schema=False)
    def swagger(request: Request) -> HTMLResponse:
        r = root(request)
        return get_swagger_ui_html(
            openapi_url=f"{r}{api.openapi_url}",
            title=f"{api.title} - API",
            swagger_js_url=f"{r}{PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{r}{PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{r}{PREFIX}/favicon.png",
        )

    @api.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        r = root(request)
        return get_redoc_html(
            openapi_url=f"{r}{api.openapi_url}",
            title=f"{api.title} - API",
            redoc_js_url=f"{r}{PREFIX}/redoc.standalone.js",
            redoc_favicon_url=f"{r}{PREFIX}/favicon.png",
            with_google_fonts=False,
        )
