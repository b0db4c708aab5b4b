# meshpass: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/.tools/cargo/bin:$(HOME)/.cargo/bin:$(PATH)
export MESHPASS_ENVOY_BIN ?= $(CURDIR)/.tools/bin/envoy
export MESHPASS_BAO_BIN ?= $(CURDIR)/.tools/bin/bao
WASM := target/wasm32-wasip1/wasm-release/meshpass_filter.wasm
export MESHPASS_FILTER_WASM ?= $(CURDIR)/$(WASM)
FUZZ_SECONDS ?= 15
FUZZ_TARGETS := jws_parse jwks_parse spiffe_id_parse token_exchange_form verify_compact_jws revocation_feed header_map_parse es256_differential p256_field \
	exchange_answer plugin_config shared_data_codecs request_path_parse issuer_policy audience_scope_parse xfcc_parse

.PHONY: setup build wasm lint lint-shell test unit fuzz-smoke fuzz bench bench-smoke bench-baseline bench-core \
	bench-exchange bench-filter demo clean \
	images images-filter images-check monitoring-check

## setup: install the wasm target, Envoy, OpenBao and cargo-fuzz into .tools/ (idempotent)
setup:
	@bash scripts/setup.sh

## wasm: build the release filter (.wasm) and the empty filter the benchmark compares it with
wasm: setup
	cargo build -p meshpass-filter -p meshpass-noop-filter -p meshpass-floor-filter --target wasm32-wasip1 --profile wasm-release
	@ls -l $(WASM) | awk '{print "[wasm] " $$5 " bytes: " $$9}'

## build: the exchange service, meshpassctl, the e2e/demo binaries and the filter
build: wasm
	cargo build -p meshpass-exchange -p meshpassctl -p meshpass-e2e --bins

## lint: rustfmt and clippy (host and wasm32-wasip1), warnings are errors; shellcheck
lint: setup lint-shell
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p meshpass-core -p meshpass-filter -p meshpass-noop-filter -p meshpass-floor-filter --target wasm32-wasip1 -- -D warnings
	# fuzz/ is its own workspace (nightly, libfuzzer): formatted and linted like the rest
	cargo fmt --manifest-path fuzz/Cargo.toml --check
	cargo +nightly clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings

## lint-shell: shellcheck every script under scripts/ and e2e/kind/
lint-shell: setup
	shellcheck -x $$(find scripts e2e/kind istio -name '*.sh' | sort)

## images: build the OCI images into target/images/ (filter: Istio Wasm image; exchange:
## static musl binary) and pin their digests in istio/ (scripts/images.sh)
images: setup
	bash scripts/images.sh build

## images-filter: the filter image only (no musl build), digests pinned
images-filter: setup
	bash scripts/images.sh build-filter

## images-check: the manifests pin the digests the current sources build; skopeo + umoci
## inspect both layouts (MESHPASS_CHECK_EXCHANGE_IMAGE=1 also rebuilds the exchange image)
images-check: wasm
	bash scripts/images.sh check

## monitoring-check: promtool checks the PrometheusRule and runs its alert unit tests
monitoring-check: setup
	bash scripts/check-monitoring.sh

## test: everything CI runs (the README's test command)
test: setup lint build unit bench-smoke fuzz-smoke images-check monitoring-check
# A whole run builds everything once: incremental state (~2 GB of target/) only costs disk,
# and CI's disk is shared.
test: export CARGO_INCREMENTAL := 0

unit:
	cargo test --workspace --no-fail-fast
	# core's rule tests again on the native (ring) signature backend
	cargo test -p meshpass-core --features native-crypto --no-fail-fast

## fuzz-smoke: each fuzz target for FUZZ_SECONDS (make fuzz for longer runs), two at a time
## (one per core) after one build of them all; new inputs go to fuzz/corpus/T (ignored),
## the committed seeds in fuzz/seeds/T are read only
fuzz-smoke: setup
	cd fuzz && cargo +nightly fuzz build
	@cd fuzz && printf '%s\n' $(FUZZ_TARGETS) | xargs -P 2 -I{} bash -c '\
	  mkdir -p corpus/{}; \
	  out=$$(cargo +nightly fuzz run {} corpus/{} seeds/{} -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 2>&1); rc=$$?; \
	  echo "[fuzz] {} ($(FUZZ_SECONDS)s): $$(printf "%s\n" "$$out" | grep -E "^Done [0-9]+ runs" | tail -1)"; \
	  if [ $$rc -ne 0 ]; then printf "%s\n" "$$out" | tail -60; echo "[fuzz] {} FAILED (exit $$rc)"; exit 1; fi'

fuzz:
	$(MAKE) fuzz-smoke FUZZ_SECONDS=300

## bench: the whole-system benchmark (bench/README.md): writes BENCHMARKS.md and bench/charts/
## (ARGS=--quick for a shorter run; BASELINE_WASM=path or BASELINE_REV=rev for the baseline filter row)
BASELINE_REV ?= e076c13^
BASELINE_DIR := target/bench-baseline
# The measured servers are release builds (each built on its own, so neither's feature
# set rebuilds the other); the orchestrator only starts processes and runs wrk.
bench: wasm bench-baseline
	cargo build --release -p meshpass-exchange
	cargo build --release -p meshpass-bench-servers
	cargo build -p meshpass-bench -p meshpass-bench-servers
	@bw="$(BASELINE_WASM)"; \
	if [ -z "$$bw" ] && [ -n "$(BASELINE_REV)" ]; then \
	  bw=$(CURDIR)/$(BASELINE_DIR)/$$(git rev-parse --short "$(BASELINE_REV)")/meshpass_filter.wasm; fi; \
	set -x; MESHPASS_EXCHANGE_BIN=$(CURDIR)/target/release/meshpass-exchange BASELINE_WASM="$$bw" \
	  MESHPASS_BENCH_SERVERS_BIN=$(CURDIR)/target/release/meshpass-bench-servers \
	  target/debug/meshpass-bench $(ARGS)

## bench-baseline: the filter built from BASELINE_REV (git archive, own target dir), once per revision
bench-baseline: setup
	@if [ -z "$(BASELINE_WASM)" ] && [ -n "$(BASELINE_REV)" ]; then \
	  rev=$$(git rev-parse --short "$(BASELINE_REV)") && out=$(BASELINE_DIR)/$$rev && \
	  if [ ! -f $$out/meshpass_filter.wasm ]; then \
	    echo "[bench] building the baseline filter from $$rev" && \
	    rm -rf $(BASELINE_DIR)/src && mkdir -p $(BASELINE_DIR)/src $$out && \
	    git archive $$rev | tar -x -C $(BASELINE_DIR)/src && \
	    cargo build --manifest-path $(BASELINE_DIR)/src/Cargo.toml -p meshpass-filter --target wasm32-wasip1 \
	      --profile wasm-release --target-dir $(BASELINE_DIR)/target && \
	    cp $(BASELINE_DIR)/target/wasm32-wasip1/wasm-release/meshpass_filter.wasm $$out/; \
	  fi; \
	fi

## bench-smoke: the benchmark harness end to end in about 2 min (1 rep of 6 proxy rows for 1 s, meshpass hit and miss included; router and empty wasm under callgrind; one 10-mapping step per store), part of `make test`
bench-smoke: wasm
	cargo build -p meshpass-bench -p meshpass-bench-servers
	timeout 420 target/debug/meshpass-bench --smoke

## bench-core: criterion benchmarks of core validation
bench-core: setup
	cargo bench -p meshpass-core --features native-crypto

## bench-exchange: POST /token cold/warm vs raw transit/sign and bare axum, against local OpenBao (interleaved reps, ratios)
bench-exchange: setup
	cargo bench -p meshpass-exchange --bench exchange

## bench-filter: the filter through real Envoy vs router / no-op wasm / jwt_authn / ext_authz (ratios)
bench-filter: wasm
	bash filter/bench/run.sh

## demo: the whole stack (Envoy + filter + exchange service + OpenBao), walkthrough, then waits for Ctrl-C
demo: build
	cargo run -q -p meshpass-e2e --bin meshpass-demo -- $(ARGS)

clean:
	cargo clean
	rm -rf .tools fuzz/target
