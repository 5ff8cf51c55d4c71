# swift-rabbitmq: install dependencies, run throwaway brokers, test.
# 'make help' lists the targets. The scripts in scripts/ do the work.

SHELL := /usr/bin/env bash

# The default test node: NAME@localhost on 127.0.0.1:PORT (distribution on PORT+20000).
BROKER_NAME ?= swiftrmq
BROKER_PORT ?= 5673
# Build folders: 'make test' and 'make test-tsan'; the Samples and Benchmarks packages (one folder per package:
# SwiftPM keeps one build plan per folder).
SCRATCH         ?= .build
TSAN_SCRATCH    ?= .build-tsan
SAMPLES_SCRATCH ?= .build-samples
BENCH_SCRATCH   ?= .build-benchmarks
# Extra arguments for 'swift test', e.g. make test ARGS='--filter Consumer'.
ARGS ?=
# Extra arguments for 'rabbitmq-chaos run', e.g. make chaos CHAOS_ARGS='--seed 42'.
CHAOS_ARGS ?=

export BROKER_NAME BROKER_PORT

.DEFAULT_GOAL := help
.PHONY: help deps broker broker-stop test test-tsan lint format docs
.PHONY: cluster cluster-stop tls tls-stop postgres postgres-stop bench demo chaos clean

help: ## List the targets
	@echo "swift-rabbitmq make targets:"
	@awk -F ':.*## ' '/^[a-z-]+:.*## / { printf "  %-13s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo
	@echo "Variables: BROKER_NAME=$(BROKER_NAME) BROKER_PORT=$(BROKER_PORT) SCRATCH=$(SCRATCH) TSAN_SCRATCH=$(TSAN_SCRATCH) ARGS=..."
	@echo "Set AMQP_URL=amqp://user:pass@host:port/vhost to test against your own broker (then none is started)."

deps: ## Install missing Debian packages (librabbitmq-dev rabbitmq-server pkg-config openssl time libsqlite3-dev postgresql)
	@scripts/deps.sh

broker: deps ## Start the test node swiftrmq@localhost on port 5673, from empty data
	@scripts/broker.sh start $(BROKER_NAME) $(BROKER_PORT)

broker-stop: ## Stop the test node
	@scripts/broker.sh stop $(BROKER_NAME)

test: ## deps, build, start the brokers, swift test, stop the brokers
	@SWIFT_SCRATCH=$(SCRATCH) SAMPLES_SCRATCH=$(SAMPLES_SCRATCH) scripts/test.sh $(ARGS)

test-tsan: ## The same under ThreadSanitizer (swift test --sanitize=thread, in .build-tsan)
	@SWIFT_SCRATCH=$(TSAN_SCRATCH) SWIFT_SANITIZE=thread scripts/test.sh $(ARGS)

lint: ## swift format lint --strict with .swift-format's rules (make test runs it when CI=true)
	@scripts/format.sh lint

format: ## swift format in place with .swift-format's rules
	@scripts/format.sh format

docs: ## The library's DocC documentation, in .docs/RabbitMQ.doccarchive (make test builds it when CI=true)
	@scripts/docs.sh --scratch-path $(SCRATCH)

cluster: deps ## Start a 3-node cluster swiftrmq-c1..c3@localhost on ports 5681-5683
	@scripts/cluster.sh start

cluster-stop: ## Stop the 3-node cluster
	@scripts/cluster.sh stop

tls: deps ## Make certificates in .broker/tls and start swiftrmq-tls@localhost (5690, TLS 5691)
	@scripts/tls.sh start

tls-stop: ## Stop the TLS node and remove its certificates
	@scripts/tls.sh stop

postgres: deps ## Start a throwaway PostgreSQL in .postgres/ on POSTGRES_PORT (5433), from empty data
	@scripts/postgres.sh start

postgres-stop: ## Stop the throwaway PostgreSQL and remove .postgres/
	@scripts/postgres.sh stop

bench: ## Run the benchmarks (scripts/bench.sh; the Benchmarks package)
	@SWIFT_SCRATCH_PATH=$(BENCH_SCRATCH) scripts/bench.sh

demo: ## Run the sample order pipeline (Samples/, 10,000 orders) on a fresh local broker, then stop it; DEMO_ARGS=...
	@SWIFT_SCRATCH=$(SAMPLES_SCRATCH) scripts/demo.sh $(DEMO_ARGS)

chaos: ## The chaos soak: 35 faults on a cluster of its own (5881-5883), no confirmed message lost; CHAOS_ARGS=...
	@SWIFT_SCRATCH=$(BENCH_SCRATCH) scripts/chaos.sh $(CHAOS_ARGS)

clean: ## Stop all throwaway nodes, remove .broker/ and the build folders
	@scripts/cluster.sh stop
	@CLUSTER_NAME=swiftrmq-x CLUSTER_PORTS="5881 5882 5883" scripts/cluster.sh stop
	@scripts/tls.sh stop
	@scripts/postgres.sh stop
	@scripts/broker.sh stop $(BROKER_NAME)
	@for d in .broker/*/; do [ -f "$$d/port" ] && scripts/broker.sh stop "$$(basename "$$d")"; done; true
	rm -rf .broker .chaos .docs $(SCRATCH) $(TSAN_SCRATCH) $(SAMPLES_SCRATCH) $(BENCH_SCRATCH) Samples/.build \
		Benchmarks/.build
