# Thin wrapper over Meson/Ninja. The contract (docs/architecture.md): `make` builds
# build/jobgated and build/jobgate, `make check` runs every test, `make demo`
# starts a personal gateway with a demo app and prints a link.
BUILD      ?= build
ASAN_BUILD ?= build-asan
PYTHON     := /usr/bin/python3
CLANG      ?= clang
FUZZ_SECONDS ?= 120

.PHONY: all deps check layout unit unit-asan integration integration-asan fuzz valgrind demo bench bench-smoke bench-deps clean browser-deps

all: $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(BUILD)/build.ninja:
	scripts/install-deps build
	meson setup $(BUILD) --buildtype=debugoptimized -Dwerror=true

$(ASAN_BUILD)/build.ninja:
	meson setup $(ASAN_BUILD) --buildtype=debug -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false

check:
	scripts/install-deps test browser
	$(MAKE) all browser-deps
	$(MAKE) FUZZ_SECONDS=20 layout unit unit-asan bench-smoke fuzz integration integration-asan valgrind

# The architecture's promises that a program can check (docs/architecture.md).
layout:
	$(PYTHON) -m pytest -q tests/layout

# playwright-core (pinned in tests/browser/package-lock.json) for the browser tests; npm ci
# runs again only when node_modules is missing or older than package.json or the lock.
BROWSER_DIR := tests/browser
browser-deps: $(BROWSER_DIR)/node_modules/.package-lock.json

$(BROWSER_DIR)/node_modules/.package-lock.json: $(BROWSER_DIR)/package.json $(wildcard $(BROWSER_DIR)/package-lock.json)
	cd $(BROWSER_DIR) && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; \
	  else npm install --no-audit --no-fund; fi
	touch $@

unit: all
	meson test -C $(BUILD) --suite unit --print-errorlogs

unit-asan: $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  meson test -C $(ASAN_BUILD) --suite unit --print-errorlogs

# Every parser under libFuzzer (scripts/fuzz, tests/fuzz): FUZZ_SECONDS each, seeds replayed first.
fuzz:
	BUILD=$(BUILD) CLANG=$(CLANG) scripts/fuzz $(FUZZ_SECONDS)

integration: all
	JOBGATE_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q tests/integration

# The same suites against the ASan/UBSan binaries (without the 1 GiB transfers and the
# other tests that measure RSS): any sanitizer report, leaks at exit included, fails the run.
integration-asan: $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)
	rm -rf $(ASAN_BUILD)/sanitizer-logs && mkdir -p $(ASAN_BUILD)/sanitizer-logs
	ASAN_OPTIONS=detect_leaks=1:log_path=$(abspath $(ASAN_BUILD))/sanitizer-logs/asan \
	UBSAN_OPTIONS=print_stacktrace=1:log_path=$(abspath $(ASAN_BUILD))/sanitizer-logs/ubsan \
	JOBGATE_BUILD=$(abspath $(ASAN_BUILD)) $(PYTHON) -m pytest -q -m "not slow and not rss" tests/integration
	@if [ -n "$$(ls -A $(ASAN_BUILD)/sanitizer-logs)" ]; then \
	  echo "integration-asan: sanitizer reports:"; cat $(ASAN_BUILD)/sanitizer-logs/*; exit 1; \
	else echo "integration-asan: no sanitizer reports"; fi

# memcheck over an integration subset that touches every module (scripts/valgrind).
valgrind: all
	PYTHON=$(PYTHON) scripts/valgrind $(BUILD)

demo:
	scripts/install-deps demo
	$(MAKE) all
	scripts/demo.sh $(BUILD)

# jobgate against its peers (bench/README.md). bench-smoke: every scenario and contender for
# a second with tiny sizes, so that the harness cannot rot; it fails only when a contender
# does not start or a scenario gets no successful answer, never on speed.
# configurable-http-proxy is pinned in bench/package-lock.json.
BENCH_DIR := bench
bench-deps: $(BENCH_DIR)/node_modules/.package-lock.json

$(BENCH_DIR)/node_modules/.package-lock.json: $(BENCH_DIR)/package.json $(BENCH_DIR)/package-lock.json
	cd $(BENCH_DIR) && npm ci --no-audit --no-fund
	touch $@

bench:
	scripts/install-deps bench
	$(MAKE) all bench-deps
	bench/run.sh $(BUILD)

bench-smoke:
	scripts/install-deps bench
	$(MAKE) all bench-deps
	BENCH_SMOKE=1 bench/run.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
