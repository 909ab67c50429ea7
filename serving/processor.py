"""The stream processor: decode, route, batch, commit. The model math is `serving.update`.

One loop per replica:
    poll -> (rebalance: restore assigned partitions from the changelog + replay)
         -> begin transaction
         -> decode each record (bad ones -> dead-letter topic with the reason)
         -> group by series, step every series' next observation as one batch (update_batch)
         -> send forecasts (key = series id)
         -> send the states of series changed `checkpoint_interval_s` ago or more, + offset marker
         -> send the consumed offsets to the transaction, commit.
Checkpoints are incremental: each series' state is written about one interval after its first
unwritten change, oldest first, so the cost is spread over transactions instead of a burst that
holds up every forecast behind it. A partition's offset marker is the offset of its oldest
unwritten change; restore loads the states, replays the input from the marker, and skips each
record a series' state already holds (each state carries the offset of its last record).
Any Kafka error inside a transaction aborts it and rewinds: in-memory state is rebuilt from the
changelog and the committed offsets, so nothing is lost or produced twice. A checkpoint that the
changelog refuses (`CheckpointError`) is logged, counted, and retried with backoff; until one goes
through every change is due at once, so every transaction carries a checkpoint and no offset is
committed past the last durable checkpoint's interval.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata, TopicPartition

from serving.checkpoint import MARKER_KEY, Marker, decode_series, encode_series
from serving.metrics import ProcessorMetrics
from serving.observation import Observation, Rejection, decode_observation
from serving.update import Forecast, SeriesState, StreamModel, update_batch

__all__ = [
    "CheckpointError",
    "ProcessorConfig",
    "StreamProcessor",
    "TransactionStuck",
    "forecast_message",
]

log = logging.getLogger("statecast.serving")

CLOSE_TIMEOUT_S = 5.0
PRODUCER_RETRY_BACKOFF_MS = 20
PASS_MIN_STATES = 100  # this many due states are written at once (see _pass_due)


@dataclass(frozen=True)
class ProcessorConfig:
    bootstrap_servers: str
    in_topic: str
    out_topic: str
    group_id: str = "statecast"
    dead_letter_topic: str = ""  # default: <out_topic>.dead-letter
    changelog_topic: str = ""  # default: <group_id>.state
    instance: str = "0"  # transactional.id = <group_id>-<instance>; keep it stable across restarts
    checkpoint_interval_s: float = 5.0
    max_poll_records: int = 5000
    poll_timeout_ms: int = 100
    idle_records: int = 1_000_000  # a series silent for this many records of its partition restarts
    max_series_per_partition: int = 200_000
    transaction_timeout_ms: int = 30_000
    slow_transaction_s: float = 1.0  # a transaction longer than this is logged with its phases
    # Static group membership (group.instance.id = the transactional id): a process restarted in
    # place with the same instance gets its partitions back at once instead of after the session
    # timeout (45 s); one that goes away for good holds them until that timeout. Off for Serve,
    # whose replicas come and go.
    static_membership: bool = False
    # Backoff cap after failed transactions (a refused checkpoint, a broker error): 0.5 s doubling.
    retry_max_s: float = 30.0
    # Passed through to every kafka-python client: security_protocol, sasl_*, ssl_* ...
    kafka_options: tuple[tuple[str, Any], ...] = ()

    @property
    def dead_letters(self) -> str:
        return self.dead_letter_topic or f"{self.out_topic}.dead-letter"

    @property
    def changelog(self) -> str:
        return self.changelog_topic or f"{self.group_id}.state"

    def __post_init__(self) -> None:
        for name in ("bootstrap_servers", "in_topic", "out_topic", "group_id", "instance"):
            if not getattr(self, name):
                raise ValueError(f"ProcessorConfig.{name} must not be empty")
        if len({self.in_topic, self.out_topic, self.dead_letters, self.changelog}) != 4:
            raise ValueError("in, out, dead-letter and changelog topics must all differ")
        if self.checkpoint_interval_s <= 0 or self.max_poll_records < 1 or self.idle_records < 1:
            raise ValueError("checkpoint_interval_s, max_poll_records, idle_records must be > 0")


@functools.lru_cache(maxsize=1 << 18)
def key_hash(key: bytes) -> int:
    """The default partitioner's hash (murmur2, as the Java client), memoised per series id.
    Forecasts are sent with an explicit partition `key_hash(key) % partitions`, the partition
    kafka-python would pick itself: its partitioner costs ~60 us a record (pure-Python murmur2,
    the partition list sorted per call), half of what a forecast costs to send."""
    return int(murmur2(key)) & 0x7FFFFFFF


def forecast_message(m: StreamModel, f: Forecast) -> bytes:
    return forecast_messages(m, [f])[0]


def forecast_messages(m: StreamModel, forecasts: list[Forecast]) -> list[bytes]:
    """The JSON of each forecast (docs/schemas/forecast.schema.json); array work done once."""
    if not forecasts:
        return []
    y = np.ascontiguousarray(np.moveaxis(np.stack([f.y for f in forecasts]), -1, 1))  # [B,Q,H,C]
    stamps = np.datetime_as_string(np.array([f.ts for f in forecasts], "datetime64[ns]"), unit="s")
    levels = [f"{q:g}" for q in m.model.quantiles]
    median = m.model.config.median_index
    channels = list(m.spec.channels)
    out = []
    for i, f in enumerate(forecasts):
        doc = {
            "series": f.series,
            "ts": str(stamps[i]),
            "model": m.label,
            "horizon": int(y.shape[2]),
            "warming": f.warming,
            "channels": channels,
            "point": y[i, median],
            "quantiles": {q: y[i, k] for k, q in enumerate(levels)},
        }
        # orjson writes numpy arrays directly, float32 with the shortest repr that round-trips:
        # 40x faster than json.dumps of lists, and half the bytes.
        out.append(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
    return out


def dead_letter_message(
    tp: TopicPartition, offset: int, rej: Rejection, raw: bytes | None
) -> bytes:
    doc = {
        "reason": rej.reason,
        "detail": rej.detail,
        "topic": tp.topic,
        "partition": tp.partition,
        "offset": offset,
        # Raw bytes as latin-1 text keeps every byte (and JSON stays valid for any input).
        "raw": None if raw is None else raw.decode("latin-1"),
        "raw_encoding": "latin-1",
    }
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class PartitionStore:
    """The series of one input partition and what the next checkpoint must write."""

    series: OrderedDict[str, SeriesState] = field(default_factory=OrderedDict)
    touched: dict[str, int] = field(default_factory=dict)  # series -> offset of its last record
    # Series whose state changed since it was last written -> (monotonic time, offset) of the
    # poll that first changed it. Insertion order is oldest first in both, so the first entry
    # gives the partition's marker offset and the entries due are a prefix.
    dirty: OrderedDict[str, tuple[float, int]] = field(default_factory=OrderedDict)
    evicted: set[str] = field(default_factory=set)
    next_offset: int = 0

    def marker_offset(self) -> int:
        """Replay from here reproduces every unwritten change (earlier records of series whose
        state is newer are skipped by their own offset)."""
        for _, offset in self.dirty.values():
            return offset
        return self.next_offset

    def mark_dirty(self, series: str, now: float, offset: int) -> None:
        if series not in self.dirty:
            self.dirty[series] = (now, offset)

    def all_due(self) -> None:
        """Every series (changed or not) is written by the next checkpoint."""
        floor = self.marker_offset()
        due = OrderedDict((s, (float("-inf"), off)) for s, (_, off) in self.dirty.items())
        for s in self.series:
            due.setdefault(s, (float("-inf"), floor))
        self.dirty = due


Send = Callable[[str, bytes, bytes | None, int | None], None]


class TransactionStuck(KafkaError):
    """A transactional request got no answer within the transaction timeout: the producer is
    unusable (kafka-python lost the request), so the worker reopens both clients."""


class CheckpointError(KafkaError):
    """The changelog topic refused (part of) a checkpoint; the transaction must abort."""


class StreamProcessor:
    def __init__(
        self, cfg: ProcessorConfig, model: StreamModel, metrics: ProcessorMetrics | None = None
    ):
        self.cfg = cfg
        self.model = model
        self.metrics = metrics or ProcessorMetrics()
        self.layout = model.model.init_state(1, device="cpu").layout_id()
        self.stores: dict[TopicPartition, PartitionStore] = {}
        self.pending: set[TopicPartition] = set()  # assigned, not yet restored
        self._last_sweep: dict[TopicPartition, float] = {}  # per partition, see _sweep_due
        self._checkpoint_failing = False  # set by a refused checkpoint, cleared by a durable one
        self._last_pass = time.monotonic()  # of _checkpoint, for its per-transaction budget
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self.error: BaseException | None = None
        self._changelog_sends: list[Any] = []  # futures of the checkpoint in this transaction
        self._retry_at = 0.0  # monotonic time before which no transaction is tried
        self._retry_s = 0.0  # current backoff; 0 while transactions succeed
        self._out_partitions = 1  # of the forecasts topic, read at each transaction's start

    # ---- clients -------------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.cfg.bootstrap_servers, **dict(self.cfg.kafka_options)}

    def ensure_topics(self) -> None:
        """Create the output, dead-letter and changelog topics if missing (changelog compacted,
        as many partitions as the input)."""
        admin = KafkaAdminClient(**self._options())
        try:
            parts = admin.describe_topics([self.cfg.in_topic])[0]["partitions"]
            n = len(parts)
            if n == 0:
                raise ValueError(f"input topic {self.cfg.in_topic!r} does not exist")
            existing = set(admin.list_topics())
            wanted = [
                NewTopic(self.cfg.out_topic, n, 1),
                NewTopic(self.cfg.dead_letters, 1, 1),
                NewTopic(self.cfg.changelog, n, 1, topic_configs={"cleanup.policy": "compact"}),
            ]
            todo = [t for t in wanted if t.name not in existing]
            if todo:
                with contextlib.suppress(TopicAlreadyExistsError):  # another replica was first
                    admin.create_topics(todo)
        finally:
            admin.close()

    @property
    def _transactional_id(self) -> str:
        return f"{self.cfg.group_id}-{self.cfg.instance}"

    def _open(self) -> None:
        opts = self._options()
        self._producer = KafkaProducer(
            **opts,
            transactional_id=self._transactional_id,
            transaction_timeout_ms=self.cfg.transaction_timeout_ms,
            # Large batches: the commit at the end of each poll flushes them anyway, and every new
            # batch wakes kafka-python's IO thread (a socket write), which dominated at 16 KiB.
            linger_ms=20,
            batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
            # A transaction begun while the broker still writes the last one's markers is answered
            # CONCURRENT_TRANSACTIONS and retried after this backoff; kafka-python 3.0.12 sleeps
            # its general retry_backoff_ms (default 100 ms) there. python -m bench.transactions,
            # local broker: a transaction's p99 224-284 ms at 100, 69-77 at 20, 45-49 at 5; but
            # at 5 the stream's half-rate p99 was worse (the retries' CPU, on 2 cores).
            retry_backoff_ms=PRODUCER_RETRY_BACKOFF_MS,
        )
        self._producer.init_transactions()
        static = {"group_instance_id": self._transactional_id} if self.cfg.static_membership else {}
        self._consumer = KafkaConsumer(
            **opts,
            **static,
            group_id=self.cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self.cfg.max_poll_records,
        )
        self._consumer.subscribe([self.cfg.in_topic], listener=_Rebalance(self))

    def close(self) -> None:
        # Bounded: a producer left with a batch it cannot deliver (after a refused record,
        # kafka-python may retry a split batch out of sequence) would otherwise wait out the 120 s
        # delivery timeout here. What it drops belonged to an aborted transaction, and the next
        # producer's init_transactions fences it anyway.
        closers = [
            (self._consumer, lambda c: c.close(timeout_ms=CLOSE_TIMEOUT_S * 1000)),
            (self._producer, _close_producer),
        ]
        for client, close in closers:
            if client is not None:
                try:
                    close(client)
                except Exception:  # closing is best effort; the broker fences us anyway
                    log.exception("closing a Kafka client")
        self._consumer = self._producer = None

    # ---- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.ensure_topics()
        self._open()
        try:
            while not stop.is_set():
                self.poll_once()
        finally:
            self.close()

    def poll_once(self) -> int:
        assert self._consumer is not None and self._producer is not None
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            # Backing off after a failed transaction: sleep in short steps (so a stop is seen
            # within one poll timeout) rather than spin; the group heartbeat has its own thread.
            time.sleep(min(wait, self.cfg.poll_timeout_ms / 1000))
            return 0
        t_poll = time.perf_counter()
        polled = self._consumer.poll(
            timeout_ms=self.cfg.poll_timeout_ms, max_records=self.cfg.max_poll_records
        )
        t_start = time.perf_counter()
        if self.pending:
            # Newly assigned: drop what was fetched before the restore, restore, then resume.
            polled = {tp: recs for tp, recs in polled.items() if tp not in self.pending}
            todo = sorted(self.pending)
            self.pending.clear()
            self.restore(todo)
            self._consumer.resume(*todo)
        self._update_lag()
        if not polled and not self._checkpoint_due():
            return 0
        producer = self._producer
        txn = producer._transaction_manager  # its calls are awaited with a deadline (_await)
        # Cheap (the producer keeps the metadata); a topic given more partitions is picked up.
        # A KafkaError here is the worker's reconnect case: no transaction is open yet.
        self._out_partitions = len(producer.partitions_for(self.cfg.out_topic))
        t_begin = time.perf_counter()
        try:
            producer.begin_transaction()
            n = self.process(
                polled, send=lambda t, k, v, p: producer.send(t, key=k, value=v, partition=p)
            )
            t_processed = time.perf_counter()
            self._changelog_sends = []
            written = self._checkpoint(producer)
            t_checkpointed = time.perf_counter()
            offsets = {
                tp: OffsetAndMetadata(self.stores[tp].next_offset, "", -1)
                for tp in {*polled, *written}
                if tp in self.stores
            }
            # The offsets' two round trips run while the sender thread delivers the batches, so
            # the checkpoint's confirmation below mostly finds them delivered already.
            if offsets:
                group = self._consumer.group_metadata()
                self._await(producer, txn.send_offsets_to_transaction(offsets, group), "offsets")
            if written:
                self._confirm_checkpoint(producer)
            self._await(producer, txn.begin_commit(), "commit")
        except TransactionStuck:
            raise  # the worker closes both clients and reconnects; nothing here was committed
        except KafkaError as e:
            # A refused checkpoint record can surface anywhere after it (a later send, the
            # flush, the commit): the checkpoint's own futures say whether it was the cause.
            refused = self._refused_checkpoint(e)
            if refused is not None:
                self._checkpoint_failed(refused)
            else:
                log.warning("transaction failed (%s); aborting and rewinding to the last commit", e)
            self._back_off()
            self.metrics.transaction_failures += 1
            try:
                self._await(producer, txn.begin_abort(), "abort")
            except KafkaError:
                log.exception("abort failed; reopening the Kafka clients")
                self.close()
                self._open()
                return 0
            self._rewind()
            return 0
        done = time.perf_counter()
        if done - t_start > self.cfg.slow_transaction_s:
            # What a latency spike is made of, for whoever reads the log after a p99 alert.
            log.warning(
                "slow transaction: %.0f ms for %d records (restore and lag %.0f ms, process %.0f, "
                "checkpoint sends %.0f for %d records, offsets, confirm and commit %.0f; the poll "
                "before: %.0f)",
                (done - t_start) * 1e3,
                n,
                (t_begin - t_start) * 1e3,
                (t_processed - t_begin) * 1e3,
                (t_checkpointed - t_processed) * 1e3,
                len(self._changelog_sends),
                (done - t_checkpointed) * 1e3,
                (t_start - t_poll) * 1e3,
            )
        if written:
            self.metrics.checkpoints += 1
            if self._checkpoint_failing:
                refusals = self.metrics.checkpoint_failures
                log.info("checkpoint written again (%d refusals so far)", refusals)
            self._checkpoint_failing = False
        self._retry_s = 0.0
        return n

    def _await(self, producer: KafkaProducer, result: Any, what: str) -> None:
        """`send_offsets_to_transaction`, `commit_transaction` and `abort_transaction` with a
        deadline. kafka-python 3.0.12 waits on them forever, and its sender drops a transactional
        request whose coordinator refuses the connection (an exception from `await_ready` skips
        the re-enqueue): a broker restart mid-transaction then hung the worker for good. After
        the transaction timeout the broker aborts the transaction anyway, so that is the wait."""
        producer._sender.wakeup()
        if not result.wait(timeout_ms=self.cfg.transaction_timeout_ms):
            raise TransactionStuck(
                f"the broker did not answer the transaction's {what} within "
                f"{self.cfg.transaction_timeout_ms / 1000:g} s"
            )

    def _confirm_checkpoint(self, producer: KafkaProducer) -> None:
        """Wait until the broker has taken every checkpoint record of this transaction; raise
        CheckpointError if it refused any. Done before the commit because kafka-python 3.0 can
        block forever in `commit_transaction` when a record fails after its batch was split
        (e.g. a record over the topic's max.message.bytes); flushed first, the failure surfaces
        here and the transaction aborts cleanly."""
        producer.flush(timeout=self.cfg.transaction_timeout_ms / 1000)
        refused = self._refused_checkpoint(None)
        if refused is not None:
            raise refused

    def _refused_checkpoint(self, cause: KafkaError | None) -> CheckpointError | None:
        """A CheckpointError naming what the broker said, if a checkpoint record of this
        transaction failed; None if there was no checkpoint or it went through."""
        if isinstance(cause, CheckpointError):
            return cause
        sends = self._changelog_sends
        failed = [f for f in sends if f.failed()]
        if not failed:
            return None
        errors = {type(f.exception).__name__ for f in failed}
        # kafka-python wraps the broker's error in the error of the call that ran into it.
        errors.update(
            type(a).__name__ for a in (cause.args if cause else ()) if isinstance(a, Exception)
        )
        return CheckpointError(
            f"{len(failed)} of {len(sends)} checkpoint records refused by the changelog topic "
            f"{self.cfg.changelog!r} ({', '.join(sorted(errors))})"
        )

    def _back_off(self) -> None:
        """After a failed transaction: wait 0.5 s, doubling per consecutive failure up to
        retry_max_s, before the next one (poll_once sleeps it off in short steps)."""
        self._retry_s = min(max(self._retry_s * 2, 0.5), self.cfg.retry_max_s)
        self._retry_at = time.monotonic() + self._retry_s

    def _checkpoint_failed(self, e: CheckpointError) -> None:
        self.metrics.checkpoint_failures += 1
        self._checkpoint_failing = True
        log.error(
            "checkpoint failed: %s. Nothing of this transaction is committed: offsets stay at the "
            "last durable checkpoint; retrying with backoff (up to %.0f s)",
            e,
            self.cfg.retry_max_s,
        )

    def process(self, polled: dict[TopicPartition, list[Any]], send: Send | None) -> int:
        """Step every record of `polled`; `send` is None while replaying (no output)."""
        t0 = time.perf_counter()
        queues: dict[tuple[TopicPartition, str], list[tuple[Observation, int, bytes | None]]] = {}
        n = 0
        first: dict[TopicPartition, int] = {}  # the poll's first offset per partition
        for tp, records in polled.items():
            store = self.stores.setdefault(tp, PartitionStore())
            touched = store.touched
            if records:
                first[tp] = records[0].offset
            for rec in records:
                n += 1
                obs = decode_observation(rec.value, rec.key, self.model.spec)
                if isinstance(obs, Rejection):
                    self._reject(tp, rec.offset, obs, rec.value, send)
                elif touched.get(obs.series, -1) >= rec.offset:
                    pass  # replay: the checkpointed state already holds this record
                else:
                    queues.setdefault((tp, obs.series), []).append((obs, rec.offset, rec.value))
                store.next_offset = rec.offset + 1
        now = time.monotonic()
        while queues:
            # One round: the next observation of every queued series, one batched model step.
            keys, seen = [], set()
            for key in queues:
                if key[1] not in seen:  # the same id in two partitions waits a round
                    keys.append(key)
                    seen.add(key[1])
            heads = [queues[k].pop(0) for k in keys]
            states = [
                self._state_for(k[0], obs.series, off)
                for k, (obs, off, _) in zip(keys, heads, strict=True)
            ]
            results = update_batch(self.model, states, [h[0] for h in heads])
            accepted: list[Forecast] = []
            for (tp, series), (_, off, raw), (new, out) in zip(keys, heads, results, strict=True):
                store = self.stores[tp]
                if isinstance(out, Rejection):
                    self._reject(tp, off, out, raw, send)
                    continue
                assert new is not None
                store.series[series] = new
                store.series.move_to_end(series)
                store.touched[series] = off
                store.mark_dirty(series, now, first[tp])
                store.evicted.discard(series)
                accepted.append(out)
            self.metrics.forecasts += len(accepted)
            if send is not None:
                n_out = self._out_partitions
                for f, value in zip(accepted, forecast_messages(self.model, accepted), strict=True):
                    series_key = f.series.encode()
                    send(self.cfg.out_topic, series_key, value, key_hash(series_key) % n_out)
            for k in keys:
                if not queues[k]:
                    del queues[k]
        for tp in polled:
            self._enforce_capacity(self.stores[tp])
        self.metrics.events += n
        if n:
            self.metrics.observe_batch(time.perf_counter() - t0, n)
        self.metrics.live_series = sum(len(s.series) for s in self.stores.values())
        self.metrics.state_bytes = self.metrics.live_series * (
            self.model.initial_flat().numel() * 4
        )
        return n

    def _state_for(self, tp: TopicPartition, series: str, offset: int) -> SeriesState | None:
        store = self.stores[tp]
        state = store.series.get(series)
        if state is not None and offset - store.touched.get(series, offset) > self.cfg.idle_records:
            self.metrics.idle_restarts += 1
            return None  # idle too long: forgotten, whether or not the sweep has run yet
        return state

    def _enforce_capacity(self, store: PartitionStore) -> None:
        while len(store.series) > self.cfg.max_series_per_partition:
            series, _ = store.series.popitem(last=False)  # least recently updated
            store.touched.pop(series, None)
            store.dirty.pop(series, None)
            store.evicted.add(series)
            self.metrics.evictions += 1

    def _sweep_idle(self, store: PartitionStore) -> None:
        for series in [
            s for s, off in store.touched.items() if store.next_offset - off > self.cfg.idle_records
        ]:
            del store.series[series]
            del store.touched[series]
            store.dirty.pop(series, None)
            store.evicted.add(series)
            self.metrics.evictions += 1

    def _reject(
        self, tp: TopicPartition, offset: int, rej: Rejection, raw: bytes | None, send: Send | None
    ) -> None:
        self.metrics.count_rejection(rej.reason)
        if send is not None:
            send(
                self.cfg.dead_letters,
                b"" if raw is None else raw[:256],
                dead_letter_message(tp, offset, rej, raw),
                None,
            )

    # ---- checkpoints ---------------------------------------------------------------------
    def _sweep_due(self, tp: TopicPartition, now: float) -> bool:
        """Each partition sweeps idle series and writes its marker once an interval, on its own
        phase (set at restore), so the partitions of a replica take turns."""
        return now - self._last_sweep.setdefault(tp, now) >= self.cfg.checkpoint_interval_s

    def _due_before(self, now: float) -> float:
        """Changes made before this time are due. While checkpoints are refused, all of them."""
        return float("inf") if self._checkpoint_failing else now - self.cfg.checkpoint_interval_s

    def _pass_due(self, now: float) -> bool:
        """A transaction writes states once a twentieth of an interval has passed since the last
        one did, or at once when PASS_MIN_STATES are due. A few states are cheaper gathered: a
        pass costs the transaction the changelog's produce and confirmation whatever its size
        (with 1,000 series, some states in every transaction was slower at half load). Many
        states are cheaper spread: with 100,000 series each event dirties another series, and
        a twentieth of an interval's worth in one transaction is the latency spike."""
        if self._checkpoint_failing or now - self._last_pass >= self._pass_period:
            return True
        before, due = self._due_before(now), 0
        for store in self.stores.values():
            for t, _ in store.dirty.values():  # oldest first: stop at the first one not due
                if t > before:
                    break
                due += 1
                if due >= PASS_MIN_STATES:
                    return True
        return False

    @property
    def _pass_period(self) -> float:
        return self.cfg.checkpoint_interval_s / 20

    def _checkpoint_due(self) -> bool:
        now = time.monotonic()
        before = self._due_before(now)
        passing = self._pass_due(now)
        for tp, store in self.stores.items():
            if store.evicted or self._sweep_due(tp, now):
                return True
            for t, _ in store.dirty.values() if passing else ():  # the oldest change decides
                if t <= before:
                    return True
                break
        return False

    def _checkpoint(self, producer: KafkaProducer, force: bool = False) -> set[TopicPartition]:
        """Send, per partition, the states whose first unwritten change is due (all with
        `force`), tombstones for evicted series, and then the partition's marker: the offset
        replay must start from, given what the changelog holds once this transaction commits.
        Returns the partitions written to."""
        t0 = time.perf_counter()
        now = time.monotonic()
        before = float("inf") if force else self._due_before(now)
        # A budget per pass: twice the rate that writes every dirty series once an interval,
        # for the time since the last pass. Series changed in one big poll (a backlog, a
        # restore) fall due together; the budget spreads them over about half an interval
        # instead of one transaction that delays every forecast behind it.
        unlimited = force or self._checkpoint_failing
        passing = unlimited or self._pass_due(now)
        share = min(2 * (now - self._last_pass) / self.cfg.checkpoint_interval_s, 1.0)
        if passing:
            self._last_pass = now
        sends = self._changelog_sends
        written = set()
        for tp, store in self.stores.items():
            sweep = self._sweep_due(tp, now)
            if sweep:
                self._sweep_idle(store)
                self._last_sweep[tp] = now
            wrote = sweep or bool(store.evicted)
            dirty = store.dirty
            if not passing:
                budget = 0
            elif unlimited:
                budget = len(dirty)
            else:
                budget = max(math.ceil(share * len(dirty)), 8)
            while dirty and budget > 0:
                series, (t, _) = next(iter(dirty.items()))
                if t > before:
                    break
                budget -= 1
                del dirty[series]
                value = encode_series(store.series[series], self.layout, store.touched[series])
                sends.append(
                    producer.send(
                        self.cfg.changelog, key=series.encode(), value=value, partition=tp.partition
                    )
                )
                wrote = True
            for series in store.evicted:
                sends.append(
                    producer.send(
                        self.cfg.changelog, key=series.encode(), value=None, partition=tp.partition
                    )
                )
            store.evicted.clear()
            if not wrote:
                continue
            marker = Marker(store.marker_offset(), self.model.label, self.layout)
            sends.append(
                producer.send(
                    self.cfg.changelog,
                    key=MARKER_KEY,
                    value=marker.to_bytes(),
                    partition=tp.partition,
                )
            )
            written.add(tp)
        if written:
            self.metrics.checkpoint_seconds = time.perf_counter() - t0
        return written

    def restore(self, tps: Iterable[TopicPartition]) -> None:
        """Rebuild the state of `tps` from the changelog, then replay input up to the commit."""
        assert self._consumer is not None
        for tp in tps:
            t0 = time.perf_counter()
            store, marker = self._read_changelog(tp.partition)
            committed = self._consumer.committed(tp)
            start = marker.offset if marker is not None else None
            if marker is not None and marker.layout != self.layout:
                log.warning(
                    "partition %s: checkpoint is from model %s; re-warming", tp, marker.model
                )
                store = self._rewarm(store)
            self.stores[tp] = store
            # Stagger the partitions' sweeps and markers over the interval (golden-ratio phases);
            # a partition restored again (rewind, reopened clients) keeps its clock.
            phase = (tp.partition * 0.6180339887) % 1.0
            self._last_sweep.setdefault(
                tp, time.monotonic() - phase * self.cfg.checkpoint_interval_s
            )
            replayed = 0
            if committed is not None and (start is None or start < committed):
                replayed = self._replay(tp, start, committed)
            position = committed if committed is not None else (start or 0)
            self.stores[tp].next_offset = position
            if committed is not None or start is not None:
                self._consumer.seek(tp, position)
            self.metrics.restores += 1
            log.info(
                "restored %s: %d series, replayed %d records in %.2f s",
                tp,
                len(self.stores[tp].series),
                replayed,
                time.perf_counter() - t0,
            )

    def _reader(self) -> KafkaConsumer:
        return KafkaConsumer(
            **self._options(),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_poll_records=self.cfg.max_poll_records,
        )

    def _read_changelog(self, partition: int) -> tuple[PartitionStore, Marker | None]:
        """The partition's states as of its last good offsets marker, and that marker.

        A checkpoint's state records precede its marker in the same transaction, so the states
        read since the last marker are held back and applied when the next good marker arrives.
        Records nobody should have written (a corrupt or foreign state, a key that is not UTF-8,
        a corrupt marker) never stop the restore: each is logged and counted
        (`statecast_corrupt_checkpoint_records_total`); a corrupt state drops that series (it
        starts afresh, and the next checkpoint writes a tombstone over the record); a corrupt
        marker discards the states read since the last good one, so the restore replays from a
        marker the states match (from the start of the input when none is left)."""
        tp = TopicPartition(self.cfg.changelog, partition)
        reader = self._reader()
        store, marker = PartitionStore(), None
        pending: dict[str, tuple[SeriesState | None, str, int]] = {}
        width = self.model.initial_flat().numel()
        try:
            reader.assign([tp])
            reader.seek_to_beginning(tp)
            end = reader.end_offsets([tp])[tp]
            while reader.position(tp) < end:
                for rec in reader.poll(timeout_ms=500).get(tp, []):
                    if rec.key == MARKER_KEY:
                        try:
                            good = Marker.from_bytes(rec.value)
                        except (ValueError, KeyError, TypeError) as e:
                            self._corrupt(tp, rec.offset, "offsets marker", e)
                            pending.clear()
                            continue
                        marker = good
                        self._apply_pending(tp, store, pending, good, width)
                        continue
                    try:
                        series = rec.key.decode()
                    except (UnicodeDecodeError, AttributeError) as e:
                        self._corrupt(tp, rec.offset, "series key", e)
                        continue
                    if rec.value is None:
                        pending[series] = (None, "", 0)
                        continue
                    try:
                        state, layout, offset = decode_series(rec.value)
                    except ValueError as e:
                        self._corrupt(tp, rec.offset, f"state of series {series!r}", e)
                        pending[series] = (None, "", 0)
                        store.evicted.add(series)
                        continue
                    pending[series] = (state, layout, offset)
        finally:
            reader.close()
        if pending:
            log.error(
                "partition %s: %d state records after the last offsets marker ignored",
                tp,
                len(pending),
            )
        return store, marker

    def _apply_pending(
        self,
        tp: TopicPartition,
        store: PartitionStore,
        pending: dict[str, tuple[SeriesState | None, str, int]],
        marker: Marker,
        width: int,
    ) -> None:
        for series, (state, layout, offset) in pending.items():
            foreign = state is not None and (
                layout != marker.layout or (layout == self.layout and state.hidden.numel() != width)
            )
            if foreign:
                self._corrupt(tp, None, f"state of series {series!r}", "another model's state")
                store.evicted.add(series)
            if state is None or foreign:
                store.series.pop(series, None)
                store.touched.pop(series, None)
                continue
            store.series[series] = state
            store.series.move_to_end(series)
            store.touched[series] = offset
            store.evicted.discard(series)
        pending.clear()

    def _corrupt(self, tp: TopicPartition, offset: int | None, what: str, why: object) -> None:
        self.metrics.corrupt_checkpoint_records += 1
        at = f" at offset {offset}" if offset is not None else ""
        log.error("changelog %s%s: corrupt %s ignored (%s)", tp, at, what, why)

    def _replay(self, tp: TopicPartition, start: int | None, stop: int) -> int:
        reader = self._reader()
        n = 0
        try:
            reader.assign([tp])
            if start is None:
                reader.seek_to_beginning(tp)
            else:
                reader.seek(tp, start)
            while reader.position(tp) < stop:
                records = [r for r in reader.poll(timeout_ms=500).get(tp, []) if r.offset < stop]
                if records:
                    self.process({tp: records}, send=None)
                    n += len(records)
        finally:
            reader.close()
        return n

    def _rewind(self) -> None:
        assert self._consumer is not None
        tps = list(self.stores)
        self.stores.clear()
        self._changelog_sends = []
        self.restore(tps)  # keeps each partition's sweep clock (see restore)

    def _rewarm(self, store: PartitionStore) -> PartitionStore:
        from serving.hot_swap import rewarm

        out = rewarm(self.model, store.series)
        new = PartitionStore(
            series=OrderedDict(out), touched=dict(store.touched), next_offset=store.next_offset
        )
        new.all_due()
        return new

    def _update_lag(self) -> None:
        if self._consumer is None:
            return
        lag = 0
        for tp in self.stores:
            high = self._consumer.highwater(tp)
            if high is not None:
                lag += max(high - self.stores[tp].next_offset, 0)
        self.metrics.lag = lag

    # ---- model swap ----------------------------------------------------------------------
    def swap_model(self, model: StreamModel) -> None:
        """Between transactions: keep compatible states, re-warm the rest, checkpoint soon."""
        from serving.hot_swap import rewarm

        new_layout = model.model.init_state(1, device="cpu").layout_id()
        old, kept = self.model, new_layout == self.layout
        self.model = model
        if not kept:
            for store in self.stores.values():
                store.series = OrderedDict(rewarm(model, store.series))
        self.layout = new_layout
        for store in self.stores.values():  # the next transaction writes every state, new model
            store.all_due()
        self.metrics.model_swaps += 1
        log.info(
            "model %s -> %s (state %s)", old.label, model.label, "kept" if kept else "re-warmed"
        )


def _close_producer(producer: KafkaProducer) -> None:
    try:
        producer.close(timeout=CLOSE_TIMEOUT_S)
    except KafkaError:
        # The flush timed out on batches the broker will not take. kafka-python 3.0.12 then
        # leaves the producer open, and its __del__ flushes again and raises inside the garbage
        # collector, at a random later time. Fail what is left and close without flushing.
        log.warning("closing the producer: undelivered batches dropped (an aborted transaction)")
        producer._sender.force_close()
        producer._accumulator.abort_batches(KafkaError("producer closed"))
        producer.close(timeout=0)


class _Rebalance(ConsumerRebalanceListener):
    """Runs on kafka-python's IO thread, where blocking calls are not allowed: it only pauses new
    partitions and marks them; the loop restores them right after `poll` returns."""

    def __init__(self, proc: StreamProcessor):
        self.proc = proc

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Every transaction is committed before the next poll, so there is nothing to flush: the
        # new owner restores from the changelog and replays to the committed offset.
        for tp in revoked:
            self.proc.stores.pop(tp, None)
            self.proc.pending.discard(tp)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if assigned and self.proc._consumer is not None:
            self.proc._consumer.pause(*assigned)
        self.proc.pending.update(assigned)
