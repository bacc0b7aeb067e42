# fleetlake: `make demo` runs the pipeline on this machine, `make test` checks everything.
# Each target installs what it needs (the Python venv with moto, cargo-lambda, SAM CLI, cfn-lint) idempotently.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
REQUIREMENTS := infra/local/requirements.txt
VENV_STAMP := $(VENV)/.installed-$(shell sha1sum $(REQUIREMENTS) | cut -c1-12)
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
MOTO_PORT ?= 5000
WEATHER_PORT ?= 8089
LAMBDA_PORT ?= 9000
POSTGRES_PORT ?= 5433

# The Lambda functions: one crate each under functions/.
FUNCTIONS := $(notdir $(wildcard functions/*))
FUNCTION_PACKAGES := $(addprefix -p ,$(FUNCTIONS))

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export SAM_CLI_TELEMETRY := 0

.PHONY: help toolchain venv browser postgres audit-tools schema lint fmt-check clippy test test-rust test-infra test-e2e template-check demo down model bench bench-enricher bench-delta bench-sync bench-predict bench-compact bench-poll bench-init bench-latency bench-memory bench-api bench-writers bench-scale cost redrive build sam-build test-sam sam-local package clean-local

help:
	@echo "make demo   - local stack (moto + weather stub), a day of a synthetic fleet through every function (cargo lambda watch + router), report"
	@echo "make test   - fmt, clippy -D warnings, unit + integration tests, template, IAM, checkov and cfn-guard checks"
	@echo "make model  - train the fuel-24h model on a synthetic fleet and export it to models/fuel-24h/ (ONNX + test fixture)"
	@echo "make bench  - weather-enricher and delta-writer on 1,000,000 generated records against moto, beside the Python baselines; partition-sync latency; predictor on 100,000 positions; compaction of 10,000 small files; a pg-poller poll of 1,000,000 changed rows; peak RSS for 50 MB vs 500 MB objects; predictions-api latency beside DynamoDB (release builds)"
	@echo "make bench-scale - a day of 10,000 units through every function, checked end to end (SCALE_UNITS=1000 for a smaller fleet)"
	@echo "make cost   - the cost model per day and per million positions at 1k/10k/100k units from the measured scale runs"
	@echo "make schema - regenerate the Glue columns (stack.json, template.yaml, Athena DDL) from the bronze table specs"
	@echo "make down   - stop the local stack"
	@echo "make build  - release Lambda binaries for arm64 (cargo lambda build)"

# The pinned toolchain (rust-toolchain.toml). A machine whose stable toolchain is that version gets it linked
# under the pinned name instead of a download; otherwise rustup installs it.
toolchain:
	@channel=$$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml); \
	if ! rustup run "$$channel" rustc --version >/dev/null 2>&1; then \
	  if rustup run stable rustc --version 2>/dev/null | grep -q " $$channel "; then \
	    echo "linking the installed stable toolchain as $$channel"; \
	    rustup toolchain link "$$channel" "$$(rustup run stable rustc --print sysroot)"; \
	  else \
	    rustup toolchain install "$$channel" --profile minimal --component rustfmt --component clippy; \
	  fi; \
	fi

venv: $(VENV_STAMP)
$(VENV_STAMP): $(REQUIREMENTS)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(REQUIREMENTS)
	@rm -f $(VENV)/.installed-* && touch $@

# The auditors' tools (infra/policy/audit.py): checkov from PyPI in its own venv (its pins clash with moto's), the
# Control Tower guard rules from PyPI, cfn-guard built from crates.io once per version into the build cache.
AUDIT_VENV := .venv-audit
AUDIT_REQUIREMENTS := infra/policy/audit-requirements.txt infra/policy/guard-rules-requirements.txt
AUDIT_STAMP := $(AUDIT_VENV)/.installed-$(shell cat $(AUDIT_REQUIREMENTS) | sha1sum | cut -c1-12)
CFN_GUARD_VERSION := 3.1.1
CFN_GUARD := $(TARGET_DIR)/audit-tools/cfn-guard-$(CFN_GUARD_VERSION)/bin/cfn-guard

audit-tools: $(AUDIT_STAMP) $(CFN_GUARD)
$(AUDIT_STAMP): $(AUDIT_REQUIREMENTS)
	@test -x $(AUDIT_VENV)/bin/python || python3 -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r infra/policy/audit-requirements.txt
	$(AUDIT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r infra/policy/guard-rules-requirements.txt
	@rm -f $(AUDIT_VENV)/.installed-* && touch $@
$(CFN_GUARD): | toolchain
	cargo install cfn-guard --version $(CFN_GUARD_VERSION) --locked --root $(TARGET_DIR)/audit-tools/cfn-guard-$(CFN_GUARD_VERSION)

lint: fmt-check clippy

fmt-check: toolchain
	cargo fmt --all -- --check

clippy: toolchain
	cargo clippy --workspace --all-targets -- -D warnings

# Each part prints its wall time (CI reads them; docs/benchmarks.md keeps the figures).
TEST_PARTS := fmt-check template-check test-infra test-rust test-e2e test-sam
test:
	@for part in $(TEST_PARTS); do \
	  start=$$(date +%s); $(MAKE) --no-print-directory $$part || exit 1; \
	  echo "==> make $$part: $$(( $$(date +%s) - start )) s"; \
	done

# `make test` lints while it builds: clippy-driver stands in for rustc on the workspace's own crates (what
# `cargo clippy --all-targets -- -D warnings` does), so the dependencies are compiled once for the tests instead of
# being checked for clippy and then compiled again. A lint fails the build like any error. `make clippy` is the same
# lint alone.
CLIPPY_BUILD = RUSTC_WORKSPACE_WRAPPER="$$(rustup which clippy-driver)" CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__

test-rust: toolchain venv postgres
	$(CLIPPY_BUILD) cargo test --workspace

# Headless Chromium for the dashboard test (infra/e2e): Debian's package, installed once when missing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@command -v chromium >/dev/null || { echo "installing chromium (Debian's package)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

# PostgreSQL 15's server programs and openssl for pg-poller's tests, which start their own throwaway cluster with a
# CA they make (infra/testkit/src/postgres.rs): Debian's packages, installed once when missing.
postgres:
	@{ command -v pg_config >/dev/null && test -x "$$(pg_config --bindir)/initdb" && command -v openssl >/dev/null; } || \
	  { echo "installing postgresql-15 and openssl (Debian's packages)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends postgresql-15 openssl; }

# The whole pipeline at smoke size (infra/e2e): the synthetic fleet through every function, chained by the router;
# the analysts' SQL (infra/athena) on DuckDB over the lake it builds, and the dashboard in Chromium.
test-e2e: toolchain venv browser postgres
	$(CLIPPY_BUILD) cargo build --workspace --bins
	FLEETLAKE_BIN_DIR=$(TARGET_DIR)/debug $(PY) -m unittest discover -s infra/e2e -v

# `sam local invoke` of every function with its sample event on the Docker engine, answers compared with the
# runtime-API harness's (infra/sam-local); the image is built offline by infra/sam-local/image.sh.
test-sam: toolchain venv postgres
	$(CLIPPY_BUILD) cargo build --workspace --bins
	FLEETLAKE_BIN_DIR=$(TARGET_DIR)/debug $(PY) -m unittest discover -s infra/sam-local -v

# A local stack that containers reach (moto, the stub and PostgreSQL on 0.0.0.0), the offline image, and .local/sam/ (a template
# of x86_64 functions on the debug binaries, the env-vars file): then `sam local invoke` as docs/local-stack.md shows.
sam-local: toolchain venv postgres
	cargo build --workspace --bins
	$(PY) infra/local/stack.py up --host 0.0.0.0 --moto-port $(MOTO_PORT) --weather-port $(WEATHER_PORT) --weather-stub $(TARGET_DIR)/debug/weather-stub \
	  --postgres --postgres-port $(POSTGRES_PORT)
	infra/sam-local/image.sh
	$(PY) infra/sam-local/prepare.py --bin-dir $(TARGET_DIR)/debug --stack-env .local/stack.env --out .local/sam
	@echo "try: SAM_CLI_TELEMETRY=0 sam local invoke MskLanderFunction -t .local/sam/template.json -e events/msk-lander/batch.json --env-vars .local/sam/env.json --skip-pull-image --add-host host.docker.internal:host-gateway"

model: venv
	$(PY) infra/model/train.py

test-infra: venv audit-tools
	CFN_GUARD=$(CFN_GUARD) $(PY) -m unittest discover -s infra/tests -v

# The Glue columns everywhere they are declared, from the bronze table specs (shared/core/src/bronze.rs).
schema: toolchain venv
	cargo run --quiet -p fleetlake-core --example glue_schema > infra/schema/bronze.json
	$(PY) infra/schema/generate.py

template-check: venv audit-tools
	$(PY) infra/schema/generate.py --check
	sam validate --lint --region us-east-1 --template template.yaml
	cfn-lint template.yaml
	$(PY) infra/policy/check_template.py
	$(PY) infra/policy/audit.py --checkov $(AUDIT_VENV)/bin/checkov --cfn-guard $(CFN_GUARD) --rules $(AUDIT_VENV)
	$(PY) infra/local/stack.py check-template

# DEMO_RUNTIME=watch (default): functions run under `cargo lambda watch`; DEMO_RUNTIME=binaries: the router serves
# the runtime API to the debug binaries itself. FLEET_UNITS / FLEET_HOURS / FLEET_SEED size the synthetic fleet.
# DEMO_STATS=postgres: the performance statistics go through a local PostgreSQL and pg-poller instead of MSK.
DEMO_STATS ?= msk
demo: toolchain venv $(if $(filter postgres,$(DEMO_STATS)),postgres)
	@echo "==> building the functions, the weather stub and the router"
	cargo build --workspace --bins
	$(PY) infra/local/stack.py up --moto-port $(MOTO_PORT) --weather-port $(WEATHER_PORT) --weather-stub $(TARGET_DIR)/debug/weather-stub \
	  $(if $(filter postgres,$(DEMO_STATS)),--postgres --postgres-port $(POSTGRES_PORT))
	LAMBDA_PORT=$(LAMBDA_PORT) TARGET_DIR=$(TARGET_DIR) DEMO_STATS=$(DEMO_STATS) infra/local/demo.sh

BENCH_ARGS ?= --records 1000000 --files 100 --cells 5000 --latency-ms 20 --runs 3 --batch 10

bench: bench-enricher bench-delta bench-sync bench-predict bench-compact bench-poll bench-init bench-latency bench-memory bench-api bench-writers

bench-enricher: toolchain venv
	cargo build --release -p weather-enricher
	cargo build --profile tools -p fleetlake-bench
	$(TARGET_DIR)/tools/bench-enricher --enricher $(TARGET_DIR)/release/weather-enricher $(BENCH_ARGS)

# partition-sync with 20 ms added to every S3 and Glue request; with BASELINE=<rev>, that commit's build syncs every
# other commit in the same run (infra/bench/baseline.sh builds it in a worktree under the build cache).
BENCH_SYNC_ARGS ?= --latency-ms 20
bench-sync: toolchain venv
	$(if $(BASELINE),baseline=$$(infra/bench/baseline.sh $(BASELINE) partition-sync) &&) \
	cargo build --release -p partition-sync && \
	cargo build --profile tools -p fleetlake-bench && \
	$(TARGET_DIR)/tools/bench-sync --sync $(TARGET_DIR)/release/partition-sync $(if $(BASELINE),--baseline $$baseline) $(BENCH_SYNC_ARGS)

bench-delta: toolchain venv
	# The in-memory ceiling runs inside bench-delta: it gets the functions' release profile (fat LTO), not `tools`.
	cargo build --release -p delta-writer -p fleetlake-bench
	$(TARGET_DIR)/release/bench-delta --writer $(TARGET_DIR)/release/delta-writer $(BENCH_DELTA_ARGS)

# With BASELINE=<rev>, that commit's predictor runs beside this one in the same run (infra/bench/baseline.sh).
# DynamoDB is dynoxide (a DynamoDB emulator in Rust, from crates.io: moto's Python work per item would be all that is
# measured) behind a proxy adding DynamoDB's round trip; BENCH_PREDICT_ARGS="--dynamodb moto" measures on moto.
DYNOXIDE_VERSION := 3.2.0
DYNOXIDE := $(TARGET_DIR)/bench-tools/dynoxide-$(DYNOXIDE_VERSION)/bin/dynoxide
BENCH_PREDICT_ARGS ?= --dynamodb-latency-ms 10 --s3-latency-ms 20
$(DYNOXIDE): | toolchain
	cargo install dynoxide-rs --version $(DYNOXIDE_VERSION) --locked --no-default-features --features native-sqlite,http-server,cli --root $(TARGET_DIR)/bench-tools/dynoxide-$(DYNOXIDE_VERSION)
bench-predict: toolchain venv $(DYNOXIDE)
	$(if $(BASELINE),baseline=$$(infra/bench/baseline.sh $(BASELINE) predictor) &&) \
	cargo build --release -p predictor && \
	cargo build --profile tools -p fleetlake-bench && \
	$(TARGET_DIR)/tools/bench-predict --predictor $(TARGET_DIR)/release/predictor --dynoxide $(DYNOXIDE) $(if $(BASELINE),--baseline $$baseline) $(BENCH_PREDICT_ARGS)

# N delta-writers appending to one table at once (N = 1, 2, 4, 8, 16), 20 ms per S3 request, create-only PUTs made
# atomic by a proxy (checked first): commits/s, lost commit races, latency p50/p99, records/s. BASELINE=<rev> runs
# each N with that commit's delta-writer first, and prints the ratios.
bench-writers: toolchain venv
	$(if $(BASELINE),baseline=$$(infra/bench/baseline.sh $(BASELINE) delta-writer) &&) \
	cargo build --release -p delta-writer && \
	cargo build --profile tools -p fleetlake-bench && \
	$(TARGET_DIR)/tools/bench-writers --writer $(TARGET_DIR)/release/delta-writer $(if $(BASELINE),--baseline $$baseline) $(BENCH_WRITERS_ARGS)

# A day of a fleet through every function (release binaries under the router, deployed batch sizes and windows, the
# day played 96 times faster), checked for every position once in bronze and a prediction per unit; the figures go
# to docs/figures/scale-<units>.json, which `make cost` reads. Not part of `make bench`: about 25 min at 10,000 units.
SCALE_UNITS ?= 10000
BENCH_SCALE_ARGS ?= --hours 24 --time-scale 96
bench-scale: toolchain venv $(DYNOXIDE)
	cargo build --release $(FUNCTION_PACKAGES)
	cargo build --profile tools -p fleetlake-router -p weather-stub
	$(PY) infra/bench/scale.py --bin-dir $(TARGET_DIR)/release --tools-dir $(TARGET_DIR)/tools --dynoxide $(DYNOXIDE) \
	  --units $(SCALE_UNITS) --out docs/figures/scale-$(SCALE_UNITS).json $(BENCH_SCALE_ARGS)

# The cost model: per day and per million positions at 1k, 10k and 100k units, from the measured scale runs and
# infra/cost/prices.json; rewrites its table in docs/benchmarks.md and the chart docs/figures/cost.svg.
cost: venv
	$(PY) infra/cost/cost.py

# lake-maintainer's compaction of a locations table of 10,000 small files: files, MB/s, peak RSS, a full read with
# Python deltalake and a redelivery's duplicate check, each before and after.
bench-compact: toolchain venv
	cargo build --release -p lake-maintainer
	cargo build --profile tools -p fleetlake-bench
	$(TARGET_DIR)/tools/bench-compact --maintainer $(TARGET_DIR)/release/lake-maintainer $(BENCH_COMPACT_ARGS)

# pg-poller against a real PostgreSQL (a throwaway cluster, TLS): a poll of 1,000,000 changed rows (first poll and
# every row updated) and of the table unchanged: time, rows/s, peak RSS, the state's size.
bench-poll: toolchain venv
	cargo build --release -p pg-poller
	cargo build --profile tools -p fleetlake-bench
	$(TARGET_DIR)/tools/bench-poll --poller $(TARGET_DIR)/release/pg-poller $(BENCH_POLL_ARGS)

# Peak RSS of weather-enricher and delta-writer for a 50 MB and a 500 MB object of long lines, and of bad lines only.
bench-memory: toolchain venv
	cargo build --release -p weather-enricher -p delta-writer
	cargo build --profile tools -p fleetlake-bench
	$(TARGET_DIR)/tools/bench-memory --enricher $(TARGET_DIR)/release/weather-enricher --writer $(TARGET_DIR)/release/delta-writer $(BENCH_MEMORY_ARGS)

# predictions-api's warm latency beside a direct DynamoDB Query in the same run, requests/s, init, peak RSS.
# Both in the release profile, in one build: the direct Query is timed with the same optimised SDK the function uses.
bench-api: toolchain venv
	cargo build --release -p predictions-api -p fleetlake-bench-api
	$(TARGET_DIR)/release/bench-api --api $(TARGET_DIR)/release/predictions-api $(BENCH_API_ARGS)

# Cold start of every function (process start to its first poll of the runtime API), release binaries.
bench-init: toolchain venv
	cargo build --release $(FUNCTION_PACKAGES)
	cargo build -p fleetlake-bench
	$(TARGET_DIR)/debug/bench-init --dir $(TARGET_DIR)/release

# One MSK batch → rows queryable through Glue, and → predictions in DynamoDB (release functions, local stack).
bench-latency: toolchain venv
	cargo build --release $(FUNCTION_PACKAGES)
	cargo build -p fleetlake-router -p weather-stub
	$(PY) infra/bench/latency.py --bin-dir $(TARGET_DIR)/release --tools-dir $(TARGET_DIR)/debug

# An operator's redrive (infra/ops/redrive.py; docs/deploy.md, "Operations: redrive"), e.g.
#   make redrive ARGS="queue --queue fleetlake-delta-writer --dry-run"
redrive: venv
	$(PY) infra/ops/redrive.py $(ARGS)

down: venv
	$(PY) infra/local/stack.py down

# cargo lambda cross-compiles with zig from the venv; it adds the aarch64 Rust target through rustup when missing.
build: toolchain venv
	cargo lambda build --release --arm64 --workspace --exclude weather-stub --exclude fleetlake-testkit --exclude fleetlake-bench

sam-build: toolchain venv
	sam build --template template.yaml

# What CI checks of the deployment: `sam build` drives cargo lambda for every function of the template. Built
# without LTO and at opt-level 1 (CARGO_PROFILE_RELEASE_*) to keep CI short: it proves that every function builds
# and packages for arm64, not how fast the result runs; `make sam-build` builds what you deploy.
# The functions are first built together in one cargo run, exactly as sam build's per-function runs build them
# (from the workspace root, the same flags): both cores stay busy across the whole dependency graph, and sam build
# then finds every binary up to date and packages it.
PACKAGE_ENV := CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1
package: toolchain venv
	@start=$$(date +%s); $(PACKAGE_ENV) cargo lambda build --release --arm64 $(addprefix --bin ,$(FUNCTIONS)); \
	echo "==> cargo lambda build: $$(( $$(date +%s) - start )) s"
	@start=$$(date +%s); $(PACKAGE_ENV) sam build --template template.yaml --build-dir .aws-sam/package; \
	echo "==> sam build: $$(( $$(date +%s) - start )) s"
	@n=0; for f in $(FUNCTIONS); do \
	  id=$$(echo $$f | sed -E 's/(^|-)([a-z])/\U\2/g')Function; \
	  test -x .aws-sam/package/$$id/bootstrap || { echo "sam build left no bootstrap for $$id"; exit 1; }; \
	  file .aws-sam/package/$$id/bootstrap | grep -q aarch64 || { echo "$$id is not an arm64 binary"; exit 1; }; \
	  n=$$((n + 1)); \
	done; echo "sam build: $$n arm64 bootstraps"

clean-local: down
	rm -rf .local
