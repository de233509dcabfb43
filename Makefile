# postroom's front door: `make help` lists every target. CI runs `make test`, nothing else.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help install run test lint browser bench chaos migrate clean readme-config

help: ## list every target
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install postroom with its local-run and test dependencies

run: $(STAMP) ## start the whole pipeline locally (private PostgreSQL + Redis under var/ unless DATABASE_URL/REDIS_URL are set)
	$(BIN)/postroom run

test: $(STAMP) lint browser ## lint, then the test suite against real PostgreSQL, Redis, workers, the sandbox and a headless browser
	$(BIN)/python -m pytest

browser: ## install Debian's chromium and chromium-driver (the widget's browser test) when missing
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium chromium-driver)

lint: $(STAMP) ## ruff and mypy over the code and the tests
	$(BIN)/ruff check common services tests
	$(BIN)/mypy common services

bench: $(STAMP) ## start a private stack and report throughput, latency and CPU per message (writes var/bench/)
	$(BIN)/python -m tests.bench

chaos: $(STAMP) ## start a private stack, inject crashes and outages, and count lost and duplicated messages (writes var/chaos/)
	$(BIN)/python -m tests.chaos

migrate: $(STAMP) ## apply database migrations to DATABASE_URL
	$(BIN)/postroom migrate

clean: ## remove local data, logs and benchmark results (var/)
	rm -rf var

readme-config: $(STAMP) ## regenerate the README's configuration table from common/config.py
	$(BIN)/python -c "import re,pathlib; from common.config import markdown_table as t; p=pathlib.Path('README.md'); s=p.read_text(); p.write_text(re.sub(r'(?s)(<!-- config-table -->\n).*?(\n<!-- /config-table -->)', lambda m: m.group(1)+t()+m.group(2), s))"
