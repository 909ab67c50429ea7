"""The processor's per-partition policies, driven through `process` with records in memory:
idle eviction (counted in records, so replay decides the same), the capacity valve, checkpoints
with tombstones, incremental checkpoints restored by replay, and model swaps (compatible states
kept, incompatible ones re-warmed)."""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

import numpy as np
import torch
from kafka.structs import TopicPartition

from serving.checkpoint import MARKER_KEY, Marker, decode_series
from serving.hot_swap import rewarm
from serving.processor import PASS_MIN_STATES, ProcessorConfig, StreamProcessor
from tests.serving.conftest import CHANNELS, HOUR, T0, small_stream_model

TP = TopicPartition("obs", 0)


class Record(NamedTuple):  # the fields of a kafka-python ConsumerRecord that process() reads
    offset: int
    key: bytes
    value: bytes


def record(offset: int, series: str, hour: int) -> Record:
    ts = str(np.datetime64(T0 + hour * HOUR, "ns").astype("datetime64[s]"))
    doc = {
        "series": series,
        "ts": ts,
        "values": {c: 1.0 + hour for c in CHANNELS},
        "covariates": {"elevation": 3.0},
    }
    return Record(offset, series.encode(), json.dumps(doc).encode())


def processor(dtype: torch.dtype = torch.float32, **cfg: Any) -> StreamProcessor:
    model = small_stream_model(dtype=dtype)
    return StreamProcessor(ProcessorConfig("unused:9092", "obs", "fc", **cfg), model)


class Sent(list[tuple[str, bytes, bytes | None, int | None]]):
    def __call__(self, topic: str, key: bytes, value: bytes | None, partition: int | None) -> None:
        self.append((topic, key, value, partition))


def test_idle_series_restart_after_idle_records() -> None:
    proc = processor(idle_records=5)
    sent = Sent()
    recs = [record(0, "a", 0)] + [record(i, "b", i) for i in range(1, 7)] + [record(7, "a", 7)]
    proc.process({TP: recs}, send=sent)
    # a's second record is 7 records after its first (> 5): it starts afresh, as a new series.
    forecasts = [json.loads(v) for t, _, v, _ in sent if t == "fc" and v]
    a = [f for f in forecasts if f["series"] == "a"]
    assert len(a) == 2 and proc.stores[TP].series["a"].steps == 1
    assert proc.metrics.idle_restarts == 1
    # Within the limit it would have stepped the 6-hour gap: 1 + 6 + 1 steps.
    proc2 = processor(idle_records=50)
    proc2.process({TP: recs}, send=Sent())
    assert proc2.stores[TP].series["a"].steps == 8


def test_capacity_evicts_least_recently_updated_and_checkpoint_writes_tombstones() -> None:
    proc = processor(max_series_per_partition=3)
    sent = Sent()
    recs = [record(i, f"s{i}", 0) for i in range(5)] + [record(5, "s0", 1)]
    proc.process({TP: recs}, send=sent)
    store = proc.stores[TP]
    # Enforced after the poll: s0 was updated last, so s1 and s2 are the least recent.
    assert set(store.series) == {"s3", "s4", "s0"} and proc.metrics.evictions == 2
    assert store.series["s0"].steps == 2

    class Producer:
        def __init__(self) -> None:
            self.sent: list[tuple[str, bytes, bytes | None, int | None]] = []

        def send(self, topic: str, key: bytes, value: bytes | None, partition: int) -> None:
            self.sent.append((topic, key, value, partition))

    producer = Producer()
    proc._checkpoint(producer, force=True)  # type: ignore[arg-type]
    by_key = {k: v for t, k, v, p in producer.sent if t == "statecast.state" and p == 0}
    assert by_key[b"s1"] is None and by_key[b"s2"] is None  # tombstones
    assert b"s0" not in by_key or by_key[b"s0"] is not None
    assert Marker.from_bytes(by_key[MARKER_KEY]).offset == 6  # type: ignore[arg-type]
    state, layout, offset = decode_series(by_key[b"s4"])  # type: ignore[arg-type]
    assert layout == proc.layout and offset == 4
    assert torch.equal(state.hidden, store.series["s4"].hidden)
    assert not store.dirty and not store.evicted
    # An evicted series that comes back starts from the initial state.
    proc.process({TP: [record(6, "s1", 5)]}, send=Sent())
    assert store.series["s1"].steps == 1 and "s3" not in store.series


class Changelog:  # a producer that keeps what is sent to the changelog topic, in order
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []

    def send(self, topic: str, key: bytes, value: bytes | None, partition: int) -> None:
        assert topic == "statecast.state" and partition == 0
        self.records.append((key, value))


def test_incremental_checkpoint_then_replay_reproduces_the_uninterrupted_states() -> None:
    """Only the due states are written; the marker is the oldest unwritten change, so a restore
    (these states + replay from the marker, skipping records a state already holds) ends where
    the uninterrupted processor is, with nothing stepped twice."""
    recs = [record(i, s, i // 3) for i, s in enumerate(["a", "b", "c"] * 4)]  # 4 hours each
    # float64: batches of other compositions in the replay round differently only at 1e-16.
    proc = processor(torch.float64, checkpoint_interval_s=60.0)
    log = Changelog()
    proc.process({TP: recs[:6]}, send=None)  # a, b, c at hours 0 and 1
    store = proc.stores[TP]
    assert list(store.dirty) == ["a", "b", "c"] and not proc._checkpoint(log)  # nothing due yet
    store.dirty["a"] = (float("-inf"), store.dirty["a"][1])  # a's change is old enough
    assert not proc._checkpoint(log)  # but states go out once a twentieth of the interval
    proc._last_pass -= 3.0
    assert proc._checkpoint(log) == {TP}
    assert [k for k, _ in log.records] == [b"a", MARKER_KEY] and list(store.dirty) == ["b", "c"]
    assert Marker.from_bytes(log.records[-1][1]).offset == 0  # b and c changed from offset 0 on
    proc.process({TP: recs[6:9]}, send=None)  # hour 2: a is dirty again, from offset 6
    proc._checkpoint(log, force=True)  # b, c (and a) written: a crash after this replays from 9
    assert Marker.from_bytes(log.records[-1][1]).offset == 9
    proc.process({TP: recs[9:]}, send=None)
    # A restore after the first checkpoint only: a's state holds offsets 0-3, the marker says 0.
    for cut, replay_from in ((2, 0), (len(log.records), 9)):
        fresh = processor(torch.float64, checkpoint_interval_s=60.0)
        restored = fresh.stores.setdefault(TP, type(store)())
        pending: dict[str, Any] = {}
        marker = None
        for key, value in log.records[:cut]:
            if key == MARKER_KEY:
                marker = Marker.from_bytes(value)  # type: ignore[arg-type]
                width = store.series["a"].hidden.numel()
                fresh._apply_pending(TP, restored, pending, marker, width)
            else:
                pending[key.decode()] = decode_series(value)  # type: ignore[arg-type]
        assert marker is not None and marker.offset == replay_from
        fresh.process({TP: recs[replay_from:]}, send=None)
        # Records a restored state holds are skipped, not re-judged as out of order.
        assert not fresh.metrics.dead_letters
        for series, state in store.series.items():
            got = restored.series[series]
            assert got.steps == state.steps == 4 and got.last_ts == state.last_ts, series
            torch.testing.assert_close(got.hidden, state.hidden, rtol=1e-12, atol=1e-12)


def test_checkpoint_spreads_states_that_fall_due_together() -> None:
    """100 series changed in one poll fall due together; one transaction writes only its budget
    (twice the rate that writes every dirty series once an interval), oldest first, and the
    marker stays at the oldest unwritten change. A refused checkpoint lifts the budget."""
    proc = processor(checkpoint_interval_s=10.0)
    proc.process({TP: [record(i, f"s{i}", 0) for i in range(100)]}, send=None)
    store = proc.stores[TP]
    for series, (_, off) in store.dirty.items():
        store.dirty[series] = (float("-inf"), off)
    proc._last_pass = time.monotonic() - 1.0  # a transaction of 1 s: 2 x 1/10 of the 100
    log = Changelog()
    proc._checkpoint(log)
    states = [k for k, v in log.records if k != MARKER_KEY]
    assert states == [f"s{i}".encode() for i in range(len(states))] and 20 <= len(states) <= 21
    assert len(store.dirty) == 100 - len(states)
    assert Marker.from_bytes(log.records[-1][1]).offset == 0  # type: ignore[arg-type]
    proc._checkpoint_failing = True
    proc._checkpoint(log)
    assert not store.dirty and Marker.from_bytes(log.records[-1][1]).offset == 100  # type: ignore[arg-type]


def test_many_due_states_are_written_without_waiting_for_the_pass_period() -> None:
    """A pass waits a twentieth of an interval after the last one unless PASS_MIN_STATES are
    due: then this transaction writes its budget of them, oldest first."""
    n = PASS_MIN_STATES
    proc = processor(checkpoint_interval_s=10.0)
    proc.process({TP: [record(i, f"s{i}", 0) for i in range(n)]}, send=None)
    store = proc.stores[TP]
    log = Changelog()
    proc._last_pass = time.monotonic()  # a pass just ran
    for series, (_, off) in list(store.dirty.items())[: n - 1]:
        store.dirty[series] = (float("-inf"), off)
    assert not proc._checkpoint_due() and not proc._checkpoint(log) and not log.records
    last = next(reversed(store.dirty))
    store.dirty[last] = (float("-inf"), store.dirty[last][1])
    assert proc._checkpoint_due() and proc._checkpoint(log) == {TP}
    states = [k for k, _ in log.records if k != MARKER_KEY]
    assert states == [f"s{i}".encode() for i in range(len(states))] and 8 <= len(states) < n


def test_swap_keeps_compatible_states_and_rewarms_the_rest() -> None:
    proc = processor()
    proc.process({TP: [record(i, "a", i) for i in range(12)]}, send=None)
    before = proc.stores[TP].series["a"]
    retrained = small_stream_model(seed=5)  # same kind and sizes, other weights
    proc.swap_model(retrained)
    kept = proc.stores[TP].series["a"]
    assert kept is before and set(proc.stores[TP].dirty) == {"a"}
    other = small_stream_model("rwkv7", seed=6, head_size=8)
    proc.swap_model(other)
    warmed = proc.stores[TP].series["a"]
    expect = rewarm(other, {"a": before})["a"]
    torch.testing.assert_close(warmed.hidden, expect.hidden)
    assert warmed.steps == other.retain and proc.metrics.model_swaps == 2


def test_forecasts_go_to_the_partition_the_default_partitioner_picks() -> None:
    """Forecasts carry an explicit partition (the partitioner is too slow per record); it must be
    the one kafka-python's own default partitioner (murmur2, as the Java client) would pick."""
    from kafka.partitioner.default import DefaultPartitioner

    class Cluster:  # the three metadata calls the partitioner makes, for a 5-partition topic
        def topics(self) -> set[str]:
            return {"fc"}

        def partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(5))

        available_partitions_for_topic = partitions_for_topic

    proc = processor()
    proc._out_partitions = 5
    sent = Sent()
    names = [f"s{i}" for i in range(40)] + ["site:7/sensor@b=+", "a" * 256]
    proc.process({TP: [record(i, name, 0) for i, name in enumerate(names)]}, send=sent)
    forecasts = [(k, p) for t, k, _, p in sent if t == "fc"]
    assert len(forecasts) == len(names)
    expected = DefaultPartitioner()
    for key, partition in forecasts:
        assert partition == expected.partition("fc", key, key, None, None, Cluster())
    assert len({p for _, p in forecasts}) == 5  # and they do spread
