"""A transactional request that is never answered must not hang the processor.

kafka-python 3.0.12 drops a transactional request when its coordinator refuses the connection
(seen in CI: a broker restart mid-transaction, the worker waited forever in
`send_offsets_to_transaction`). The processor waits on each request with the transaction timeout as
its deadline and raises `TransactionStuck`, which the worker answers by reopening both clients
(`tests/serving/test_stream_kafka.py::test_broker_restart_mid_stream` runs that end to end).
Here the clients are stand-ins whose transactional results complete or never do, so the deadline
is tested deterministically."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kafka.producer.transaction_manager import TransactionalRequestResult
from kafka.structs import TopicPartition

from serving.processor import TransactionStuck
from tests.serving.test_policies import TP, processor, record


class Future:
    def failed(self) -> bool:
        return False


class TransactionManager:
    """Hands out results; `answer` says which requests the 'broker' answers."""

    def __init__(self, answer: set[str]) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def _result(self, what: str) -> TransactionalRequestResult:
        self.asked.append(what)
        result = TransactionalRequestResult()
        if what in self.answer:
            result.done()
        return result

    def send_offsets_to_transaction(self, offsets: Any, group: Any) -> TransactionalRequestResult:
        return self._result("offsets")

    def begin_commit(self) -> TransactionalRequestResult:
        return self._result("commit")


class Producer:
    def __init__(self, answer: set[str]) -> None:
        self._transaction_manager = TransactionManager(answer)
        self._sender = type("Sender", (), {"wakeup": lambda self: None})()
        self.sent = 0

    def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def begin_transaction(self) -> None:
        pass

    def send(self, *args: Any, **kwargs: Any) -> Future:
        self.sent += 1
        return Future()

    def flush(self, timeout: float | None = None) -> None:
        pass


class Consumer:
    def __init__(self) -> None:
        self.offset = 0

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.offset += 1
        return {TP: [record(self.offset, "a", self.offset)]}

    def highwater(self, tp: TopicPartition) -> int:
        return self.offset + 1

    def group_metadata(self) -> str:
        return "statecast"


def poll_once_within(proc: Any, seconds: float) -> tuple[int | None, BaseException | None]:
    """Run poll_once in a thread so that a hang fails the test instead of the suite."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["n"] = proc.poll_once()
        except BaseException as e:  # handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"poll_once still waiting after {seconds} s"
    return out.get("n"), out.get("error")


def test_answered_transaction_commits() -> None:
    proc = processor(transaction_timeout_ms=300)
    producer = Producer(answer={"offsets", "commit"})
    proc._producer, proc._consumer = producer, Consumer()  # type: ignore[assignment]
    n, error = poll_once_within(proc, 10.0)
    assert error is None and n == 1
    assert producer._transaction_manager.asked == ["offsets", "commit"]


@pytest.mark.parametrize("lost", ["offsets", "commit"])
def test_unanswered_request_raises_after_the_transaction_timeout(lost: str) -> None:
    proc = processor(transaction_timeout_ms=300)
    producer = Producer(answer={"offsets", "commit"} - {lost})
    proc._producer, proc._consumer = producer, Consumer()  # type: ignore[assignment]
    t0 = time.monotonic()
    _, error = poll_once_within(proc, 10.0)
    waited = time.monotonic() - t0
    assert isinstance(error, TransactionStuck), error
    assert f"{lost} within 0.3 s" in str(error)
    assert 0.3 <= waited < 5.0
    # Raised, not swallowed: nothing was committed, so the worker must reopen and restore.
    assert producer._transaction_manager.asked[-1] == lost
