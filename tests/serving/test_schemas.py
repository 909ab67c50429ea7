"""The published message schemas agree with the code."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from jsonschema import ValidationError

from serving.processor import dead_letter_message, forecast_message
from serving.update import Forecast, StreamModel
from tests.conftest import ROOT
from tests.serving.schemas import validate
from tests.serving.test_observation import good


def test_every_rejection_reason_is_in_the_dead_letter_schema() -> None:
    source = "".join(p.read_text() for p in (ROOT / "serving").glob("*.py"))
    used = set(re.findall(r'Rejection\(\s*"(\w+)"', source))
    schema = json.loads((ROOT / "docs/schemas/dead-letter.schema.json").read_text())
    assert used and used == set(schema["properties"]["reason"]["enum"])


def test_messages_match_their_schemas(stream_model: StreamModel) -> None:
    from kafka.structs import TopicPartition

    from serving.observation import Rejection

    validate(good(), "observation")
    with pytest.raises(ValidationError):
        validate(good(extra=1), "observation")
    with pytest.raises(ValidationError):
        validate(good(series="a b"), "observation")
    y = np.zeros((4, 3, 3), np.float32)
    doc = json.loads(forecast_message(stream_model, Forecast("s", 10**18, True, y)))
    validate(doc, "forecast")
    assert len(doc["point"]) == 4 and len(doc["point"][0]) == 3
    dead = dead_letter_message(TopicPartition("t", 0), 5, Rejection("not_json", "x"), b"\xff\x00")
    doc = json.loads(dead)
    validate(doc, "dead-letter")
    assert doc["raw"].encode("latin-1") == b"\xff\x00"
