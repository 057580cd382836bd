# Postern — build, run and test.
#   make run            start Postern on the bundled default configuration (127.0.0.1:2525 → var/maildir)
#   make run CONFIG=f   start it on configuration file f
#   make test           run the whole test suite (unit + integration against real peers)

SWIFT ?= swift
CONFIG ?=
# Packages the build links against.
BUILD_PACKAGES := lib:libpcre2-8=libpcre2-dev lib:libmaxminddb=libmaxminddb-dev
# Real peers the integration tests drive.
TEST_PACKAGES := cmd:swaks=swaks perl:Net::SSLeay=libnet-ssleay-perl cmd:smtp-sink=postfix cmd:openssl=openssl cmd:python3=python3 \
	cmd:haproxy=haproxy cmd:systemd-analyze=systemd cmd:redis-server=redis-server cmd:logrotate=logrotate

.PHONY: all build run test check deps test-deps clean bench-policy bench fuzz

all: build

deps:
	@.ci/ensure-packages.sh $(BUILD_PACKAGES)

test-deps:
	@.ci/ensure-packages.sh $(BUILD_PACKAGES) $(TEST_PACKAGES)

build: deps
	$(SWIFT) build -c release --product postern

run: build
	.build/release/postern serve $(if $(CONFIG),--config $(CONFIG))

check: build
	.build/release/postern check $(if $(CONFIG),--config $(CONFIG))

# SWIFT_BACKTRACE=enable=no: a crashing test fails at once instead of hanging in the backtracer.
test: test-deps
	SWIFT_BACKTRACE=enable=no $(SWIFT) build --build-tests
	SWIFT_BACKTRACE=enable=no $(SWIFT) test --skip-build

# The policy micro-benchmark (release build; add ARGS=--quick for a short run).
bench-policy: deps
	$(SWIFT) build -c release --product postern-policy-bench
	.build/release/postern-policy-bench $(ARGS)

# The whole-gateway benchmark: smtp-source straight to smtp-sink (the ceiling) and through a
# release Postern, alternated; CPU, memory, latency; then the policy micro-benchmark. Writes
# Benchmarks/results/ (see Benchmarks/README.md). QUICK=1 for a short run (under 2 minutes).
QUICK ?=
bench: deps
	@.ci/ensure-packages.sh cmd:smtp-source=postfix cmd:smtp-sink=postfix cmd:python3=python3
	@python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib
	$(SWIFT) build -c release --product postern
	$(SWIFT) build -c release --product postern-policy-bench
	QUICK=$(QUICK) BENCH_COMMAND="make bench$(if $(QUICK), QUICK=$(QUICK))" python3 Benchmarks/bench.py

# libFuzzer targets (issue 5): builds SMTPFuzzer with -sanitize=fuzzer,address in .build-fuzz
# and runs each target FUZZ_TIME seconds (0: no limit) or FUZZ_RUNS executions, whichever
# comes first; prints executions, exec/s and seconds per target; fails on any crash.
# See Fuzz/README.md.
#   make fuzz FUZZ_TIME=30 FUZZ_TARGETS="parser proxy"
#   make fuzz FUZZ_TIME=0 FUZZ_RUNS=10000000 FUZZ_TARGETS=resp
FUZZ_TIME ?= 60
FUZZ_RUNS ?=
FUZZ_TARGETS ?= parser session proxy mime policy resp config
fuzz: deps
	SWIFT="$(SWIFT)" FUZZ_TIME="$(FUZZ_TIME)" FUZZ_RUNS="$(FUZZ_RUNS)" FUZZ_TARGETS="$(FUZZ_TARGETS)" Fuzz/run.sh

clean:
	rm -rf .build var
