"""The published JSON Schemas (docs/schemas) as validators for the tests."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from tests.conftest import ROOT


@cache
def validator(name: str) -> Draft202012Validator:
    schema = json.loads((ROOT / "docs" / "schemas" / f"{name}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate(doc: Any, name: str) -> None:
    validator(name).validate(doc)
