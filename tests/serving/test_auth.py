"""The REST bearer-token check and the application's arguments."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.app import AppArgs, bearer_ok


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("Bearer  s3cret ", True),
        ("Bearer s3cre", False),
        ("Bearer s3cret2", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("", False),
        (None, False),
        ("Bearer ", False),
    ],
)
def test_bearer(header: str | None, ok: bool) -> None:
    assert bearer_ok("s3cret", header) is ok


def test_app_args_validate_and_pass_kafka_options_through() -> None:
    args = AppArgs(
        model_uri="models:/m@champion",
        bootstrap_servers="k:9093",
        kafka_options={"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"},
    )
    cfg = args.processor_config("0")
    assert dict(cfg.kafka_options) == {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}
    assert cfg.dead_letters == "forecasts.dead-letter" and cfg.changelog == "statecast.state"
    with pytest.raises(ValidationError):
        AppArgs(model_uri="m", bootstrap_servers="k:1", processors=0)
    with pytest.raises(ValidationError):
        AppArgs(model_uri="m", bootstrap_servers="k:1", checkpoint_interval_s=0)


def test_kafka_options_from_the_command_line() -> None:
    from serving.worker import kafka_options

    got = kafka_options(
        ["security_protocol=SASL_SSL", "request_timeout_ms=5000", "ssl_check_hostname=false"]
    )
    assert got == {
        "security_protocol": "SASL_SSL",
        "request_timeout_ms": 5000,
        "ssl_check_hostname": False,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        kafka_options(["nonsense"])
