"""The stream processor against the real broker: exactly-once across a SIGKILL, and dead letters.

Forecasts are read back with read_committed and compared with an offline loop of the pure update
(model.step one series at a time); "relative error" is |a - b| / (|b| + 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from serving.processor import ProcessorConfig, StreamProcessor
from tests.conftest import ROOT
from tests.reliability import Trial
from tests.serving.conftest import small_stream_model
from tests.serving.kafka_helpers import (
    Accounting,
    Tail,
    account,
    check_exactly_once,
    create_topic,
    make_stream,
    offline_forecasts,
    produce,
    read_committed,
    save_model,
)

pytestmark = pytest.mark.kafka


def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    kafka_bootstrap: str, tmp_path: Path, reliability: Callable[[Trial], None]
) -> None:
    # Double precision: batched and one-at-a-time steps then agree to ~1e-12, so any slip in
    # routing, replay or state (a lost or doubled step) shows far above the tolerance.
    m = small_stream_model(dtype=torch.float64)
    folder = save_model(m, tmp_path / "model")
    docs = make_stream(n_series=50, n_steps=200)
    create_topic(kafka_bootstrap, "obs-kill", 3)
    produce(
        kafka_bootstrap,
        "obs-kill",
        ((str(d["series"]).encode(), json.dumps(d).encode()) for d in docs),
    )
    cmd = [
        sys.executable,
        "-m",
        "serving.worker",
        "--model-uri",
        str(folder),
        "--bootstrap-servers",
        kafka_bootstrap,
        "--in-topic",
        "obs-kill",
        "--out-topic",
        "fc-kill",
        "--group",
        "kill",
        "--checkpoint-interval",
        "0.5",
        "--max-poll-records",
        "500",
    ]
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 (both runs append to it)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    tail = Tail(kafka_bootstrap, "fc-kill")
    try:
        deadline = time.monotonic() + 120
        while tail.read(3000, timeout=1.0) < 3000:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker made no progress"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        done_before = tail.read(len(docs), timeout=1.0)
        tail.close()
        assert done_before < len(docs), "killed too late to test anything"
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        got = read_committed(kafka_bootstrap, "fc-kill", expect=len(docs), timeout=180)
    finally:
        proc.kill()
        proc.wait(10)
        log.close()
    text = (tmp_path / "worker.log").read_text()
    acc = account(m, offline_forecasts(m, docs), got, label=str(folder.resolve()))
    reliability(
        Trial(
            area="fault",
            what="stream processor SIGKILLed mid-stream and restarted (50 series)",
            times=1,
            events=len(docs),
            lost=acc.lost,
            duplicated=acc.duplicated,
            outcome=_outcome(acc, 1e-6),
        )
    )
    assert "restored" in text and "replayed" in text, text[-3000:]
    check_exactly_once(acc, tol=1e-6)


def _outcome(acc: Accounting, tol: float, also: str = "", healthy: bool = True) -> str:
    """The ledger's outcome cell: pass only if the accounting is clean and `healthy`."""
    ok = healthy and (
        acc.lost == acc.duplicated == acc.unexpected == acc.mismatched == 0
        and acc.got == acc.expected
        and acc.worst <= tol
    )
    return ("pass: " if ok else "FAIL: ") + acc.summary + (f"; {also}" if also else "")


def test_malformed_records_go_to_dead_letters_and_good_ones_are_forecast(
    kafka_bootstrap: str, tmp_path: Path, reliability: Callable[[Trial], None]
) -> None:
    m = small_stream_model()
    docs = make_stream(n_series=10, n_steps=50, seed=1)
    bad: list[tuple[bytes, bytes]] = []
    kinds = [
        b"not json at all",
        b'{"series": "s000", "ts": "2023-11-14T22:00:00", "values": {"a": NaN}}',
        b'{"series": "s000", "ts": "2023-11-14T22:00:00", "values": {"nope": 1}}',
        b'{"series": "s000", "ts": "2023-11-14T22:00:00", "values": {"a": "x"}}',
        b"[]",
        b"{" + b" " * 70000 + b"}",
        # out of order: before every good record of s001
        b'{"series": "s001", "ts": "2000-01-01T00:00:00", "values": {"a": 1}, '
        b'"covariates": {"elevation": 1}}',
    ]
    for i in range(1000):
        value = kinds[i % len(kinds)]
        bad.append((b"s001" if b"s001" in value else b"s000", value))
    good = [(str(d["series"]).encode(), json.dumps(d).encode()) for d in docs]
    mixed: list[tuple[bytes, bytes]] = []
    for i, g in enumerate(good):  # 2 bad records after every good one
        mixed.append(g)
        mixed.extend(bad[2 * i : 2 * i + 2])
    assert len(mixed) == len(good) + len(bad)
    create_topic(kafka_bootstrap, "obs-bad", 2)
    produce(kafka_bootstrap, "obs-bad", mixed)
    cfg = ProcessorConfig(
        kafka_bootstrap,
        "obs-bad",
        "fc-bad",
        group_id="bad",
        checkpoint_interval_s=1.0,
        max_poll_records=300,
    )
    proc = StreamProcessor(cfg, m)
    stop = threading.Event()
    thread = threading.Thread(target=proc.run, args=(stop,), daemon=True)
    thread.start()
    try:
        got = read_committed(kafka_bootstrap, "fc-bad", expect=len(docs), timeout=120)
        dead = read_committed(kafka_bootstrap, "fc-bad.dead-letter", expect=len(bad), timeout=60)
        alive = thread.is_alive()
    finally:
        stop.set()
        thread.join(30)
    # float32, batched per poll: within 3e-5 of one-series-at-a-time (rounding, not logic).
    acc = account(m, offline_forecasts(m, docs), got)
    reliability(
        Trial(
            area="bad input",
            what=f"{len(bad)} malformed records ({len(kinds)} kinds) among {len(docs)} good ones",
            times=len(bad),
            events=len(mixed),
            lost=acc.lost,
            duplicated=acc.duplicated,
            outcome=_outcome(
                acc,
                3e-5,
                f"{len(dead)}/{len(bad)} dead letters, processor " + ("alive" if alive else "DIED"),
                healthy=alive and len(dead) == len(bad),
            ),
        )
    )
    assert alive, "the processor died"
    check_exactly_once(acc, tol=3e-5)
    assert len(dead) == len(bad)
    reasons = {}
    for d in dead:
        reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
        assert d["topic"] == "obs-bad" and isinstance(d["offset"], int) and d["detail"]
        assert d["raw"] is not None
    assert set(reasons) == {
        "not_json",
        "unknown_channel",
        "bad_value",
        "not_object",
        "oversize",
        "out_of_order",
    }
    assert proc.metrics.dead_letters == reasons
    assert proc.metrics.forecasts == len(docs)


def test_broker_restart_mid_stream(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    reliability: Callable[[Trial], None],
) -> None:
    """Stop the broker under a running processor and start it again: the worker waits,
    reconnects, restores, and every observation still has exactly one forecast."""
    from tests.conftest import KAFKA_SH, free_port

    port = free_port()
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_DIR": str(tmp_path_factory.mktemp("kafka-restart")),
    }

    def broker(action: str) -> None:
        proc = subprocess.run(
            [str(KAFKA_SH), action], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    broker("start")
    boot = f"127.0.0.1:{port}"
    m = small_stream_model(dtype=torch.float64)
    folder = save_model(m, tmp_path / "model")
    docs = make_stream(n_series=20, n_steps=60, seed=3)
    first, second = docs[: len(docs) // 2], docs[len(docs) // 2 :]
    create_topic(boot, "obs-restart", 2)
    produce(
        boot, "obs-restart", ((str(d["series"]).encode(), json.dumps(d).encode()) for d in first)
    )
    cmd = [
        sys.executable, "-m", "serving.worker", "--model-uri", str(folder),
        "--bootstrap-servers", boot, "--in-topic", "obs-restart", "--out-topic", "fc-restart",
        "--group", "restart", "--checkpoint-interval", "0.5",
    ]  # fmt: skip
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        tail = Tail(boot, "fc-restart")
        assert tail.read(len(first), timeout=120) == len(first)
        tail.close()
        broker("stop")
        time.sleep(3.0)
        assert proc.poll() is None, "the worker died with the broker"
        broker("start")
        produce(
            boot,
            "obs-restart",
            ((str(d["series"]).encode(), json.dumps(d).encode()) for d in second),
        )
        got = read_committed(boot, "fc-restart", expect=len(docs), timeout=240)
        alive = proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)
        log.close()
        broker("stop")
    acc = account(m, offline_forecasts(m, docs), got, label=str(folder.resolve()))
    reliability(
        Trial(
            area="fault",
            what="Kafka broker stopped for 3 s and restarted under a running processor",
            times=1,
            events=len(docs),
            lost=acc.lost,
            duplicated=acc.duplicated,
            outcome=_outcome(acc, 1e-6, "worker " + ("alive" if alive else "DIED"), healthy=alive),
        )
    )
    assert alive, (tmp_path / "worker.log").read_text()[-3000:]
    check_exactly_once(acc, tol=1e-6)
