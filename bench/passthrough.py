"""The client's floor: what kafka-python alone costs per event, with no decode and no model.

    python -m bench.passthrough --bootstrap-servers HOST:PORT --in-topic T --out-topic T2

The stream processor's Kafka work and nothing else: the same consumer group settings
(read_committed, manual commits, max_poll_records), the same transactional producer settings, one
transaction per poll with the consumed offsets, and for every record one output record of
`--value-bytes` (default: the size of a forecast message) sent with an explicit partition, as the
processor sends forecasts. bench/stream.py runs it as its own process, like a worker, and reports
its events/s beside the processor's: the rate no processor built on this client can beat here.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata

from serving.processor import PRODUCER_RETRY_BACKOFF_MS, key_hash


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--in-topic", required=True)
    p.add_argument("--out-topic", required=True)
    p.add_argument("--group", default="passthrough")
    p.add_argument("--instance", default="0")
    p.add_argument("--value-bytes", type=int, default=7720)
    p.add_argument("--max-poll-records", type=int, default=5000)
    args = p.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    producer = KafkaProducer(  # as StreamProcessor._open
        bootstrap_servers=args.bootstrap_servers,
        transactional_id=f"{args.group}-{args.instance}",
        linger_ms=20,
        batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
        retry_backoff_ms=PRODUCER_RETRY_BACKOFF_MS,
    )
    producer.init_transactions()
    consumer = KafkaConsumer(
        args.in_topic,
        bootstrap_servers=args.bootstrap_servers,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=args.max_poll_records,
    )
    value = os.urandom(args.value_bytes)
    try:
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=100, max_records=args.max_poll_records)
            if not polled:
                continue
            n_out = len(producer.partitions_for(args.out_topic))
            producer.begin_transaction()
            offsets = {}
            for tp, records in polled.items():
                for rec in records:
                    producer.send(
                        args.out_topic,
                        key=rec.key,
                        value=value,
                        partition=key_hash(rec.key) % n_out,
                    )
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
            producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
            producer.commit_transaction()
    finally:
        consumer.close()
        producer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
