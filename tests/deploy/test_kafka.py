"""Smoke test of the real broker that deploy/kafka/kafka.sh resolves from Maven Central, starts."""

from __future__ import annotations

import uuid

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic


def _read_all(bootstrap: str, topic: str, isolation: str, expect: int) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level=isolation,
        consumer_timeout_ms=3000,
    )
    try:
        out = []
        for msg in consumer:
            out.append((msg.key, msg.value))
            if len(out) >= expect:
                break
        return out
    finally:
        consumer.close()


def test_produce_and_consume(kafka_bootstrap: str) -> None:
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    sent = [(f"series-{i % 5}".encode(), f"value-{i}".encode()) for i in range(50)]
    for key, value in sent:
        producer.send(topic, value=value, key=key)
    producer.flush()
    producer.close()
    got = _read_all(kafka_bootstrap, topic, "read_uncommitted", expect=50)
    assert sorted(got) == sorted(sent)


def test_transactions_are_read_committed(kafka_bootstrap: str) -> None:
    topic = f"txn-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"smoke-{topic}")
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(3):
        producer.send(topic, value=f"committed-{i}".encode(), key=b"k")
    producer.commit_transaction()
    producer.begin_transaction()
    producer.send(topic, value=b"aborted", key=b"k")
    producer.flush()
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topic, value=b"committed-3", key=b"k")
    producer.commit_transaction()
    producer.close()

    committed = [v for _, v in _read_all(kafka_bootstrap, topic, "read_committed", expect=4)]
    assert committed == [b"committed-0", b"committed-1", b"committed-2", b"committed-3"]
    # The aborted record is in the log: an uncommitted reader sees it, a committed one never does.
    uncommitted = [v for _, v in _read_all(kafka_bootstrap, topic, "read_uncommitted", expect=5)]
    assert b"aborted" in uncommitted
