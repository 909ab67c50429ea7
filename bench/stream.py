"""Streaming benchmark on this machine: events/s, produce->forecast latency, state and RSS.

    python -m bench.stream                      # 1,000 and 100,000 series (several minutes)
    python -m bench.stream --series 1000 --events 50000 --rss-events 0   # a quick look

For each series count S, against a real broker started by deploy/kafka/kafka.sh on free ports:
1. throughput: E observations (S series, hourly, round-robin) are produced first, then one stream
   processor (`python -m serving.worker`, its own process, exactly-once transactions and
   checkpoints on) consumes the backlog; events/s = events / time between the first and the last
   commit of the consumer group;
2. latency: a paced producer at half that rate, then at `--light-share` of it, each for
   `--latency-seconds`; each forecast's arrival at a read_committed consumer minus its
   observation's send time; p50 and p99;
3. RSS of the processor after 100k and after `--rss-events` events (S = the first count only);
4. the client's floor: the same backlog through bench/passthrough.py (kafka-python's consume and
   transactional produce of one forecast-sized record per event, no decode, no model);
5. the windowed baseline end to end: the same processor with `--baseline-window 512`
   (serving/window_baseline.py: every event re-encodes the series' last 512 observations with
   the same model's parallel forward), on a backlog of `--baseline-events`;
6. model work only, per event, at the processor's batch size: our step (update_batch) against
   that windowed baseline, no Kafka.
`--processors N` runs N processor processes in one group (and N pass-through processes).
Prints one table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import orjson
import torch

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
CHANNELS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
T0 = np.datetime64("2024-01-01T00:00:00", "s")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_EXTRA = {"channels": list(CHANNELS), "frequency": "h", "calendar": True, "static_covariates": []}


def _model(kind: str, d_model: int, lookback: int):
    from forecast import ModelConfig, build_model
    from serving.update import StreamModel

    torch.manual_seed(0)
    cfg = ModelConfig(
        kind=kind,
        n_channels=len(CHANNELS),
        horizon=24,
        d_model=d_model,
        n_covariates=6,
        linear_lookback=lookback,
    )
    model = build_model(cfg).eval()
    extra = {
        "channels": list(CHANNELS),
        "frequency": "h",
        "calendar": True,
        "static_covariates": [],
        "lookback": lookback,
    }
    return StreamModel.from_artifact(model, extra, f"bench/{kind}")


def _messages(n_series: int, start: int, count: int, rng: np.random.Generator):
    """Observations start..start+count of the round-robin stream (event i: series i % S,
    hour i // S)."""
    for i in range(start, start + count):
        s, k = i % n_series, i // n_series
        ts = str(T0 + np.timedelta64(k, "h"))
        values = {
            c: round(float(v), 3)
            for c, v in zip(CHANNELS, rng.normal(size=len(CHANNELS)), strict=True)
        }
        series = f"s{s}"
        yield series, ts, json.dumps({"series": series, "ts": ts, "values": values}).encode()


def _produce(boot: str, topic: str, n_series: int, start: int, count: int) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=boot, linger_ms=20, batch_size=256 * 1024, acks=1)
    rng = np.random.default_rng(start)
    for series, _, value in _messages(n_series, start, count, rng):
        p.send(topic, key=series.encode(), value=value)
    p.flush()
    p.close()


def _committed(admin, group: str, topic: str) -> int:
    from kafka.errors import KafkaError

    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    except KafkaError:  # the group does not exist until the worker joins
        return 0
    return sum(o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset > 0)


def start_worker(
    boot: str,
    folder: Path,
    topic: str,
    out: str,
    group: str,
    log: IO[str],
    options: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """The processor as in production: `python -m serving.worker`, its own process."""
    cmd = [
        sys.executable, "-m", "serving.worker", "--model-uri", str(folder),
        "--bootstrap-servers", boot, "--in-topic", topic, "--out-topic", out, "--group", group,
        *(options or []),
    ]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _check_alive(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        if w.poll() is not None:
            raise RuntimeError(f"a worker exited with {w.returncode}")


def _wait_committed(
    admin,
    group: str,
    topic: str,
    target: int,
    timeout: float,
    workers: list[subprocess.Popen[bytes]],
) -> int:
    deadline = time.monotonic() + timeout
    while (done := _committed(admin, group, topic)) < target:
        _check_alive(workers)
        if time.monotonic() > deadline:
            raise TimeoutError(f"processed {done} of {target} events")
        time.sleep(0.2)
    return done


def _wait_stable(admin, group: str, members: int, workers: list[subprocess.Popen[bytes]]) -> None:
    """Until the group is Stable with `members` members: the rate is measured from there, not
    across the joins and the rebalance (which restore partitions) of a start."""
    from kafka.errors import KafkaError

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        _check_alive(workers)
        try:
            info = admin.describe_groups([group]).get(group, {})
        except KafkaError:
            info = {}
        if info.get("group_state") == "Stable" and len(info.get("members") or []) == members:
            return
        time.sleep(0.2)
    raise TimeoutError(f"group {group} did not settle with {members} members")


def _backlog_rate(
    admin, group: str, topic: str, events: int, procs: list[subprocess.Popen[bytes]]
) -> tuple[float, int]:
    """Events/s over a backlog of `events`, from when the group is stable with every process to
    the last commit -> (rate, events counted)."""
    _wait_stable(admin, group, len(procs), procs)
    e0 = _committed(admin, group, topic)
    t0 = time.perf_counter()
    _wait_committed(admin, group, topic, events, 3600, procs)
    return (events - e0) / (time.perf_counter() - t0), events - e0


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)


@contextlib.contextmanager
def local_broker(bootstrap: str | None = None) -> Iterator[tuple[str, Path]]:
    """(bootstrap, a temporary folder): deploy/kafka/kafka.sh's broker on free ports with its
    data in that folder, stopped on exit; or `bootstrap` as given (nothing started)."""
    with tempfile.TemporaryDirectory() as tmp:
        if bootstrap is not None:
            yield bootstrap, Path(tmp)
            return
        env = {
            **os.environ,
            "KAFKA_PORT": str(_free_port()),
            "KAFKA_CONTROLLER_PORT": str(_free_port()),
            "KAFKA_DIR": tmp,
            "KAFKA_HEAP": os.environ.get("KAFKA_HEAP", "1g"),
        }
        subprocess.run([str(KAFKA_SH), "start"], env=env, check=True, capture_output=True)
        try:
            yield f"127.0.0.1:{env['KAFKA_PORT']}", Path(tmp)
        finally:
            subprocess.run([str(KAFKA_SH), "stop"], env=env, capture_output=True)


def _rss_of(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(
    boot: str, n_series: int, args: argparse.Namespace, rows: list[list[str]], rss: bool, tmp: Path
) -> None:
    """One series count; the processor runs as its own process (`python -m serving.worker`), as
    in production, so the producer and consumer of this benchmark do not share its interpreter."""

    from kafka.admin import KafkaAdminClient, NewTopic

    from forecast.artifact import save_forecaster

    m = _model(args.kind, args.d_model, args.lookback)
    folder = save_forecaster(
        m.model, tmp / f"model-{n_series}", extra=_EXTRA | {"lookback": args.lookback}
    )
    topic, out, group = f"bench-in-{n_series}", f"bench-out-{n_series}", f"bench-{n_series}"
    admin = KafkaAdminClient(bootstrap_servers=boot)
    admin.create_topics([NewTopic(topic, args.partitions, 1)])
    events = max(args.events, n_series * 2)
    t = time.perf_counter()
    _produce(boot, topic, n_series, 0, events)
    produce_s = time.perf_counter() - t
    options = ["--checkpoint-interval", str(args.checkpoint_interval)]
    options += ["--max-poll-records", str(args.max_poll)]
    options += ["--slow-transaction", str(args.slow_transaction)]
    log = open((args.log_dir or tmp) / f"worker-{n_series}.log", "w")  # noqa: SIM115
    # Several processors = several replicas of one group, each with its own transactional id.
    workers = [
        start_worker(boot, folder, topic, out, group, log, [*options, "--instance", str(k)])
        for k in range(args.processors)
    ]
    try:
        # Throughput from the backlog; the clock starts once every processor has its partitions.
        rate, _ = _backlog_rate(admin, group, topic, events, workers)
        rows.append(
            [
                f"{n_series:,}",
                "throughput (backlog)",
                f"{rate:,.0f} events/s",
                f"{events:,} events; produced in {produce_s:.0f} s",
            ]
        )
        done = events
        # At half the backlog rate (the goal's condition), then at a light load, which shows
        # the floor: one poll, one step, one transaction commit.
        for share, name in ((0.5, "half rate"), (args.light_share, "light load")):
            lat = _latency(boot, topic, out, n_series, done, rate * share, args.latency_seconds)
            rows.append(
                [
                    f"{n_series:,}",
                    f"latency at {name}",
                    f"p50 {lat[0]:,.0f} ms, p99 {lat[1]:,.0f} ms",
                    f"{lat[2]:,} events at {rate * share:,.0f}/s",
                ]
            )
            done += int(rate * share * args.latency_seconds)  # what the paced producer sent
        state = m.initial_flat().numel() * m.initial_flat().element_size()
        rows.append(
            [
                f"{n_series:,}",
                "state per series",
                f"{state:,} bytes",
                f"{n_series:,} series: {n_series * state / 2**20:,.0f} MiB of state",
            ]
        )
        if rss:
            if done < 100_000:
                _produce(boot, topic, n_series, done, 100_000 - done)
                done = _wait_committed(admin, group, topic, 100_000, 3600, workers)
            rss_100k = sum(_rss_of(w.pid) for w in workers)
            if args.rss_events > done:
                _produce(boot, topic, n_series, done, args.rss_events - done)
                done = _wait_committed(admin, group, topic, args.rss_events, 3600, workers)
            rss_end = sum(_rss_of(w.pid) for w in workers)
            rows.append(
                [
                    f"{n_series:,}",
                    "worker RSS",
                    f"{rss_100k:,.0f} -> {rss_end:,.0f} MiB",
                    f"after 100k -> {done:,} events: {100 * (rss_end / rss_100k - 1):+.1f}%",
                ]
            )
    finally:
        _stop(workers)
        log.close()
        admin.close()
    if args.client_floor:
        rows.append(_client_floor(boot, n_series, args, tmp, _forecast_bytes(m)))
    if args.baseline_window:
        rows.append(_baseline_end_to_end(boot, n_series, args, tmp, folder, rate))
    _compute_only(m, min(n_series, args.max_poll), rows, n_series)


def _baseline_end_to_end(
    boot: str, n_series: int, args: argparse.Namespace, tmp: Path, folder: Path, ours: float
) -> list[str]:
    """The windowed baseline through the very same path: `python -m serving.worker
    --baseline-window W` (serving/window_baseline.py) on a backlog of its own. Polls of 500
    records: a transaction of 5,000 baseline events would outlast the 30 s transaction timeout."""
    from kafka.admin import KafkaAdminClient, NewTopic

    topic, out, group = f"base-in-{n_series}", f"base-out-{n_series}", f"base-{n_series}"
    admin = KafkaAdminClient(bootstrap_servers=boot)
    admin.create_topics([NewTopic(topic, args.partitions, 1)])
    events = args.baseline_events
    _produce(boot, topic, n_series, 0, events)
    options = ["--checkpoint-interval", str(args.checkpoint_interval), "--max-poll-records", "500"]
    options += ["--baseline-window", str(args.baseline_window)]
    log = open(tmp / f"baseline-{n_series}.log", "w")  # noqa: SIM115
    workers = [
        start_worker(boot, folder, topic, out, group, log, [*options, "--instance", str(k)])
        for k in range(args.processors)
    ]
    try:
        rate, counted = _backlog_rate(admin, group, topic, events, workers)
    finally:
        _stop(workers)
        log.close()
        admin.close()
    return [
        f"{n_series:,}",
        f"windowed baseline end to end (last {args.baseline_window} observations per event)",
        f"{rate:,.1f} events/s",
        f"{counted:,} events, same processor and transactions; the stream's backlog rate "
        f"({ours:,.0f}/s) is {ours / rate:,.0f}x",
    ]


def _forecast_bytes(m) -> int:
    """Bytes of one forecast message of this model (JSON of horizon x channels x levels)."""
    from serving.observation import Observation
    from serving.processor import forecast_message
    from serving.update import update

    obs = Observation("s0", 10**18, np.zeros(len(CHANNELS), np.float32), np.zeros(0, np.float32))
    _, f = update(m, None, obs)
    return len(forecast_message(m, f))  # type: ignore[arg-type]


def _client_floor(
    boot: str, n_series: int, args: argparse.Namespace, tmp: Path, value_bytes: int
) -> list[str]:
    """A backlog of the same stream through bench/passthrough.py: kafka-python's consume +
    transactional produce with no decode and no model, as many processes as processors. What
    the client alone allows on this machine."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=boot)
    topic, out, group = f"floor-in-{n_series}", f"floor-out-{n_series}", f"floor-{n_series}"
    admin.create_topics([NewTopic(topic, args.partitions, 1), NewTopic(out, args.partitions, 1)])
    events = max(args.events, n_series * 2)
    _produce(boot, topic, n_series, 0, events)
    log = open(tmp / f"floor-{n_series}.log", "w")  # noqa: SIM115

    def passthrough(k: int) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable, "-m", "bench.passthrough", "--bootstrap-servers", boot,
            "--in-topic", topic, "--out-topic", out, "--group", group, "--instance", str(k),
            "--value-bytes", str(value_bytes), "--max-poll-records", str(args.max_poll),
        ]  # fmt: skip
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    procs = [passthrough(k) for k in range(args.processors)]
    try:
        rate, counted = _backlog_rate(admin, group, topic, events, procs)
    finally:
        _stop(procs)
        log.close()
        admin.close()
    return [
        f"{n_series:,}",
        "client floor (kafka-python alone)",
        f"{rate:,.0f} events/s",
        f"{counted:,} events; consume + one {value_bytes:,}-byte record out per event in "
        "transactions, no decode, no model (bench/passthrough.py)",
    ]


def _latency(
    boot: str, in_topic: str, out_topic: str, n_series: int, start: int, rate: float, seconds: float
) -> tuple[float, float, int]:
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(
        bootstrap_servers=boot,
        group_id=None,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    from kafka.structs import TopicPartition

    parts = [TopicPartition(out_topic, p) for p in consumer.partitions_for_topic(out_topic)]
    consumer.assign(parts)
    consumer.seek_to_end()
    sent: dict[tuple[str, str], float] = {}
    count = int(rate * seconds)

    def produce() -> None:
        p = KafkaProducer(bootstrap_servers=boot, linger_ms=1, acks=1)
        rng = np.random.default_rng(7)
        t0 = time.monotonic()
        for j, (series, ts, value) in enumerate(_messages(n_series, start, count, rng)):
            ahead = t0 + j / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            sent[(series, ts)] = time.monotonic()
            p.send(in_topic, key=series.encode(), value=value)
        p.flush()
        p.close()

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    lat: list[float] = []
    deadline = time.monotonic() + seconds + 60
    while len(lat) < count and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=100).values():
            now = time.monotonic()
            for r in records:
                doc = orjson.loads(r.value)
                t = sent.get((doc["series"], doc["ts"]))
                if t is not None:
                    lat.append((now - t) * 1e3)
    thread.join()
    consumer.close()
    if not lat:
        return float("nan"), float("nan"), 0
    q = statistics.quantiles(lat, n=100)
    return statistics.median(lat), q[98], len(lat)


def _compute_only(m, batch: int, rows: list[list[str]], n_series: int) -> None:
    """Model work per event at the processor's batch size: our step vs re-encoding 512 steps."""
    from serving.observation import Observation
    from serving.update import update_batch

    rng = np.random.default_rng(0)
    obs = [
        Observation(
            f"s{i}",
            10**18,
            rng.normal(size=len(CHANNELS)).astype(np.float32),
            np.zeros(0, np.float32),
        )
        for i in range(batch)
    ]
    states = [s for s, _ in update_batch(m, [None] * batch, obs)]
    nxt = [Observation(o.series, o.ts + 3600 * 10**9, o.values, o.static) for o in obs]
    times = []
    for _ in range(5):
        t = time.perf_counter()
        update_batch(m, states, nxt)
        times.append(time.perf_counter() - t)
    ours = batch / statistics.median(times)
    window = torch.from_numpy(rng.normal(size=(batch, 512, len(CHANNELS))).astype(np.float32))
    cov = torch.zeros(batch, 512, 6)
    times = []
    with torch.no_grad():
        for _ in range(3):
            t = time.perf_counter()
            m.model(window, covariates=cov, last_only=True)
            times.append(time.perf_counter() - t)
    base = batch / statistics.median(times)
    rows.append(
        [
            f"{n_series:,}",
            f"model work only (batch of {batch:,})",
            f"ours {ours:,.0f} events/s, window-512 baseline {base:,.0f} events/s",
            f"{ours / base:.0f}x",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--series", type=int, nargs="+", default=[1000, 100_000])
    p.add_argument("--events", type=int, default=200_000, help="backlog for the throughput run")
    p.add_argument("--rss-events", type=int, default=1_000_000, help="0 = skip the RSS run")
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--light-share", type=float, default=0.05, help="light load, share of max")
    p.add_argument("--kind", default="selective_ssm")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--lookback", type=int, default=96)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--processors", type=int, default=1, help="stream processor processes (one group)"
    )
    p.add_argument("--max-poll", type=int, default=5000)
    p.add_argument("--checkpoint-interval", type=float, default=5.0)
    p.add_argument(
        "--baseline-window", type=int, default=512, help="0 = skip the end-to-end baseline run"
    )
    p.add_argument("--baseline-events", type=int, default=3000)
    p.add_argument(
        "--no-client-floor",
        dest="client_floor",
        action="store_false",
        help="skip the pass-through run (bench/passthrough.py) of the same backlog",
    )
    p.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    p.add_argument(
        "--slow-transaction",
        type=float,
        default=1.0,
        help="the worker logs each transaction slower than this (s) with its phases",
    )
    p.add_argument("--log-dir", type=Path, default=None, help="keep the worker logs here")
    args = p.parse_args()
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # as the worker does
    rows: list[list[str]] = []
    with local_broker(args.bootstrap) as (boot, tmp):
        for i, n in enumerate(args.series):
            run_one(boot, n, args, rows, rss=i == 0 and args.rss_events > 0, tmp=tmp)
    print(
        f"model: {args.kind}, d_model {args.d_model}, horizon 24, 7 channels, "
        f"{args.partitions} partitions, {args.processors} processor(s), torch threads 1, "
        f"{os.cpu_count()} cores"
    )
    print("| series | measure | result | note |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
