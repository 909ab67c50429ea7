"""What one kafka-python transaction costs against a local broker, phase by phase, for several
producer `retry_backoff_ms` values.

    python -m bench.transactions --backoff 100 20 10 100 10

For each value: a transactional producer runs `--transactions` transactions of `--records`
records of 2 KB over 4 partitions, each with the consumed offsets of a real consumer group
(`send_offsets_to_transaction`), as the stream processor does; prints p50 / p99 / max of
begin+send, offsets and commit, and of the whole. A transaction begun while the broker still
writes the previous one's markers is answered CONCURRENT_TRANSACTIONS and retried after the
backoff (serving/processor.py sets 20 ms; kafka-python's default is 100).
"""

from __future__ import annotations

import argparse
import statistics
import time

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

from bench.stream import local_broker


def probe(boot: str, backoff: int, transactions: int, records: int) -> str:
    p = KafkaProducer(
        bootstrap_servers=boot,
        transactional_id=f"probe-{backoff}-{time.monotonic_ns()}",
        linger_ms=20,
        batch_size=1 << 20,
        retry_backoff_ms=backoff,
    )
    p.init_transactions()
    c = KafkaConsumer(
        "in",
        bootstrap_servers=boot,
        group_id=f"probe-{backoff}-{time.monotonic_ns()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    c.poll(timeout_ms=2000)
    [tp] = c.assignment()
    value = b"x" * 2000
    phases: dict[str, list[float]] = {"begin+send": [], "offsets": [], "commit": [], "all": []}
    for i in range(transactions):
        t0 = time.perf_counter()
        p.begin_transaction()
        for k in range(records):
            p.send("out", key=str(k).encode(), value=value, partition=k % 4)
        t1 = time.perf_counter()
        p.send_offsets_to_transaction({tp: OffsetAndMetadata(i, "", -1)}, c.group_metadata())
        t2 = time.perf_counter()
        p.commit_transaction()
        t3 = time.perf_counter()
        for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
            phases[name].append(dt * 1e3)
    p.close()
    c.close()
    cells = []
    for v in phases.values():
        v.sort()
        cells.append(f"{statistics.median(v):.1f} / {v[int(len(v) * 0.99)]:.1f} / {v[-1]:.1f}")
    return f"| {backoff} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backoff", type=int, nargs="+", default=[100, 20, 10])
    ap.add_argument("--transactions", type=int, default=200)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    args = ap.parse_args(argv)
    with local_broker(args.bootstrap) as (boot, _):
        admin = KafkaAdminClient(bootstrap_servers=boot)
        admin.create_topics([NewTopic("in", 1, 1), NewTopic("out", 4, 1)])
        admin.close()
        seed = KafkaProducer(bootstrap_servers=boot)
        seed.send("in", b"x")
        seed.flush()
        seed.close()
        print("| retry_backoff_ms | begin+send p50 / p99 / max ms | offsets | commit | all |")
        print("|---|---|---|---|---|")
        for backoff in args.backoff:
            print(probe(boot, backoff, args.transactions, args.records), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
