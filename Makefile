# buildfan: the commands people and CI use. `make help` lists them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TESTBED := $(BIN)/python testbed/testbed.py


.PHONY: help venv tools testbed-up testbed-down testbed-status test unit lint demo bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(BIN)/buildfan: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/buildfan ## create .venv with buildfan and its dev tools

testbed-up: venv ## build (cached) and start the local cluster; writes .testbed/env
	$(TESTBED) up

testbed-down: venv ## stop the local cluster and remove everything it made
	$(TESTBED) down

testbed-status: venv ## show the testbed's processes
	$(TESTBED) status

TOOLS := $(HOME)/.cache/buildfan-tools/bin
ACTIONLINT_VERSION := v1.7.12

$(TOOLS)/actionlint:
	GOBIN=$(TOOLS) go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

tools: $(TOOLS)/actionlint ## test tools built from the Go module proxy (actionlint)

lint: venv ## ruff and mypy
	$(BIN)/ruff check buildfan tests testbed bench
	$(BIN)/ruff format --check buildfan tests testbed bench
	$(BIN)/mypy

unit: venv ## unit tests only (no cluster)
	$(BIN)/pytest tests/unit -q

test: venv tools testbed-up ## the whole suite against the real local cluster (what CI runs)
	PATH="$(TOOLS):$$PATH" BUILDFAN_REQUIRE_TESTBED=1 BUILDFAN_REQUIRE_TOOLS=1 $(BIN)/pytest -q
	$(MAKE) lint

demo: venv testbed-up ## build examples/matrix.yaml on the local cluster and print the summary
	. .testbed/env && $(BIN)/buildfan run examples/matrix.yaml --report .testbed/demo-report.json

bench: venv testbed-up ## run every benchmark; figures go to bench/results/
	. .testbed/env && $(BIN)/python -m bench.all

clean: testbed-down ## stop the testbed and remove .venv
	rm -rf $(VENV)
