"""`statecast replay`: a dataset becomes observation messages, and reaches a real broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.observation import Observation, ObservationSpec, decode_observation
from serving.replay import ReplayConfig, observation_messages
from statecast.cli import main
from tests.serving.kafka_helpers import create_topic

CSV = (
    "date,site,a,b\n"
    "2024-01-01 01:00:00,x,1.5,\n2024-01-01 00:00:00,y,-9999,2\n2024-01-01 02:00:00,x,NaN,3\n"
)


def test_rows_become_valid_observations(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(CSV)
    cfg = ReplayConfig(path, "t", "unused:1", series_column="site")
    msgs = list(observation_messages(cfg))
    docs = [json.loads(v) for _, v in msgs]
    assert [d["ts"] for d in docs] == [
        "2024-01-01T00:00:00",
        "2024-01-01T01:00:00",
        "2024-01-01T02:00:00",
    ]
    assert [k for k, _ in msgs] == [b"y", b"x", b"x"]
    assert docs[0]["values"] == {"a": None, "b": 2.0}  # the sentinel is missing
    assert docs[1]["values"] == {"a": 1.5, "b": None}  # an empty cell is missing
    assert docs[2]["values"] == {"a": None, "b": 3.0}  # NaN is missing (sent as null)
    spec = ObservationSpec(channels=("a", "b"))
    for key, value in msgs:
        assert isinstance(decode_observation(value, key, spec), Observation)
    later = list(
        observation_messages(
            ReplayConfig(path, "t", "x", series_column="site", start="2024-01-01T01:00")
        )
    )
    assert len(later) == 2
    single = list(observation_messages(ReplayConfig(path, "t", "x", limit=1)))
    assert [k for k, _ in single] == [b"d"]  # no series column: the file is one series


def test_bad_columns_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(CSV)
    with pytest.raises(ValueError, match="no series column 'nope'"):
        list(observation_messages(ReplayConfig(path, "t", "x", series_column="nope")))
    with pytest.raises(ValueError, match="no time column"):
        list(observation_messages(ReplayConfig(path, "t", "x", time_column="when")))


@pytest.mark.kafka
def test_replay_reaches_the_broker(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.serving.kafka_helpers import read_committed

    create_topic(kafka_bootstrap, "replay-etth1", 1)
    rc = main(
        [
            "replay",
            "--data",
            "data/ETTh1.csv",
            "--topic",
            "replay-etth1",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--start",
            "2018-06-26",
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    sent = int(out.split("sent ")[1].split()[0])
    assert sent == 20  # ETTh1 ends on 2018-06-26 19:00: 20 rows from midnight
    got = read_committed(kafka_bootstrap, "replay-etth1", expect=sent, timeout=30)
    assert len(got) == sent and got[-1]["series"] == "ETTh1"
