# The two commands of the README: `make demo` and `make test`. Both set everything up first.
# The container image of deploy/ (compose.yaml, kuberay/) is $(IMAGE).
IMAGE ?= statecast:0.1.0

.PHONY: setup demo test lint format kafka-start kafka-stop image

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

image:
	docker build -f deploy/Dockerfile -t $(IMAGE) .
