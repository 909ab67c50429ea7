# The two commands of the README: `make demo` and `make test`. Both set everything up first.
.PHONY: setup demo test lint format kafka-start kafka-stop

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/statecast demo

test: setup
	scripts/test.sh

lint: setup
	scripts/lint.sh

format: setup
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

kafka-start: setup
	deploy/kafka/kafka.sh start

kafka-stop:
	deploy/kafka/kafka.sh stop
