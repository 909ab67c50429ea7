"""/docs and /redoc work without internet: their pages reference only assets the app serves."""

from __future__ import annotations

import re

import pytest

from tests.serving.conftest import small_stream_model
from tests.serving.rest_client import call, make_app


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_page_assets_are_served_locally(page: str) -> None:
    app, _ = make_app(small_stream_model())
    r = call(app, "GET", page)
    assert r.status == 200
    html = r.body.decode()
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    refs += re.findall(r"""url: ?["']([^"']+)["']""", html)
    assert refs, html
    assert not [u for u in refs if u.startswith(("http:", "https:", "//"))], refs
    assets = [u for u in refs if u.endswith((".js", ".css"))]
    assert assets, refs
    for url in assets:
        asset = call(app, "GET", url)
        assert asset.status == 200 and len(asset.body) > 10_000, url
    assert call(app, "GET", "/openapi.json").status == 200
