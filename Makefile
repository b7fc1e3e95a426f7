# twistkv developer workflow. Every target sets up what it needs itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE   ?= node1
PORT   ?= 7379
HTTP   ?= 8379
PEER   ?= 7380
NODES  ?= 3
BASE_PORT ?= 7001

COMPOSE := docker compose -f deployments/docker/docker-compose.yml

.PHONY: help build run run-node cluster cluster-down test test-fast client clean lint bench system-deps up down logs

help:
	@echo "make run    - set up and start a local 3-node cluster with its dashboard (Ctrl-C stops it)"
	@echo "make run-node - one node in the foreground"
	@echo "make cluster / cluster-down - start / stop the local cluster in the background"
	@echo "make test   - set up and run the whole test suite"
	@echo "make build  - build the wheel into dist/"
	@echo "make client - the twistkv REPL on the local cluster"
	@echo "make bench  - compare twistkv with redis-server under redis-benchmark"
	@echo "make lint   - ruff"
	@echo "make up/down/logs - the 3-node docker compose cluster (needs a Docker engine)"
	@echo "make clean  - remove build artefacts, data/ and logs/"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

build: $(STAMP)
	$(BIN)/pip wheel -q --no-deps -w dist .
	@ls dist/*.whl

# A local 3-node cluster in the foreground: Ctrl-C stops every node it started.
run: $(STAMP)
	@$(BIN)/twistkv cluster up -n $(NODES) --base-port $(BASE_PORT) && \
	  trap '$(BIN)/twistkv cluster down' EXIT INT TERM && \
	  echo "Dashboard: http://127.0.0.1:$$(( $(BASE_PORT) + 1000 ))/   Ctrl-C stops the cluster." && \
	  $(BIN)/twistkv cluster logs -f

# One node in the foreground, as twistd runs it.
run-node: $(STAMP)
	@echo "twistkv node $(NODE): redis-cli -p $(PORT) | telnet localhost $(PORT) | http://127.0.0.1:$(HTTP)/"
	$(BIN)/twistd -n --pidfile= kvnode --node-id $(NODE) --listen tcp:$(PORT) --http tcp:$(HTTP) --peer-listen tcp:$(PEER)

cluster: $(STAMP)
	$(BIN)/twistkv cluster up -n $(NODES) --base-port $(BASE_PORT)

cluster-down: $(STAMP)
	$(BIN)/twistkv cluster down

test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

client: $(STAMP)
	$(BIN)/twistkv repl --server 127.0.0.1:$(BASE_PORT)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP) system-deps
	$(BIN)/python bench/redis_compare.py $(BENCH_ARGS)

up:
	$(COMPOSE) up -d --build

down:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs -f

clean:
	-$(BIN)/twistkv cluster down 2>/dev/null
	rm -rf dist build *.egg-info data logs run artifacts .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f twisted/plugins/dropin.cache
