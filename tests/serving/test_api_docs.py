"""docs/API.md is the app's current OpenAPI, rendered (regenerate: python -m serving.api_docs)."""

from __future__ import annotations

from serving.api_docs import main, openapi, render


def test_api_doc_is_current() -> None:
    assert main(["--check"]) == 0, "docs/API.md is stale: run python -m serving.api_docs"


def test_every_route_and_schema_is_in_the_doc() -> None:
    doc = openapi()
    text = render(doc)
    for path, methods in doc["paths"].items():
        for method in methods:
            assert f"### `{method.upper()} {path}`" in text
    for name in doc["components"]["schemas"]:
        assert f"### {name}\n" in text
