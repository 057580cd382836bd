# Postern — build, run and test.
#   make run            start Postern on the bundled default configuration (127.0.0.1:2525 → var/maildir)
#                       with Policies/default.yaml; the dashboard is on http://127.0.0.1:9125/
#   make run CONFIG=f   start it on configuration file f
#   make test           run the whole test suite (unit + integration against real peers)

SWIFT ?= swift
CONFIG ?=
# Packages the build links against.
# Hyperscan is built for x86_64 only; Vectorscan (the same API and header) elsewhere.
HYPERSCAN_PACKAGE := $(if $(filter x86_64,$(shell uname -m)),libhyperscan-dev,libvectorscan-dev)
BUILD_PACKAGES := lib:libpcre2-8=libpcre2-dev lib:libmaxminddb=libmaxminddb-dev file:/usr/include/unbound.h=libunbound-dev \
	file:/usr/include/hs/hs.h=$(HYPERSCAN_PACKAGE)
# Real peers the integration tests drive.
TEST_PACKAGES := cmd:swaks=swaks perl:Net::SSLeay=libnet-ssleay-perl cmd:smtp-sink=postfix cmd:openssl=openssl cmd:python3=python3 \
	cmd:haproxy=haproxy cmd:systemd-analyze=systemd cmd:redis-server=redis-server cmd:logrotate=logrotate \
	cmd:postfwd1=postfwd cmd:policyd-spf=postfix-policyd-spf-python \
	cmd:rspamd=rspamd cmd:opendkim=opendkim cmd:opendkim-genkey=opendkim-tools cmd:opendkim-testmsg=opendkim-tools \
	cmd:opendmarc=opendmarc cmd:clamav-milter=clamav-milter cmd:clamd=clamav-daemon cmd:unshare=util-linux \
	cmd:nsd=nsd cmd:ldns-signzone=ldnsutils cmd:ldns-keygen=ldnsutils \
	cmd:chromium=chromium cmd:chromedriver=chromium-driver cmd:testssl=testssl.sh

.PHONY: all build run test check deps test-deps clean bench-policy bench fuzz chaos chaos-broken

all: build

deps:
	@.ci/ensure-packages.sh $(BUILD_PACKAGES)

test-deps:
	@.ci/ensure-packages.sh $(BUILD_PACKAGES) $(TEST_PACKAGES)
	@python3 -c 'import selenium' 2>/dev/null || python3 -m pip install --quiet selenium 2>/dev/null \
		|| python3 -m pip install --quiet --break-system-packages selenium

build: deps
	$(SWIFT) build -c release --product postern

run: build
	@$(if $(CONFIG),true,echo "Postern on 127.0.0.1:2525 with Policies/default.yaml; the dashboard: http://127.0.0.1:9125/")
	.build/release/postern serve $(if $(CONFIG),--config $(CONFIG),--policy Policies/default.yaml)

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
	@.ci/ensure-packages.sh cmd:smtp-source=postfix cmd:smtp-sink=postfix cmd:python3=python3 file:/usr/bin/time=time
	@python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib
	$(SWIFT) build -c release --product postern
	$(SWIFT) build -c release --product postern-policy-bench
	QUICK=$(QUICK) BENCH_COMMAND="make bench$(if $(QUICK), QUICK=$(QUICK))" python3 Benchmarks/bench.py

# libFuzzer targets (issue 5): builds SMTPFuzzer with -sanitize=fuzzer,address in .build-fuzz
# and runs each target FUZZ_TIME seconds (0: no limit) or FUZZ_RUNS executions, whichever
# comes first; prints executions, exec/s and seconds per target; fails on any crash.
# See Fuzz/README.md.
#   make fuzz FUZZ_TIME=30 FUZZ_TARGETS="parser proxy"
#   make fuzz FUZZ_TIME=0 FUZZ_RUNS=10000000 FUZZ_MAX_LEN=1024 FUZZ_TARGETS=resp
FUZZ_TIME ?= 60
FUZZ_RUNS ?=
FUZZ_MAX_LEN ?=
FUZZ_TARGETS ?= parser session proxy mime policy resp config milter
fuzz: deps
	SWIFT="$(SWIFT)" FUZZ_TIME="$(FUZZ_TIME)" FUZZ_RUNS="$(FUZZ_RUNS)" FUZZ_MAX_LEN="$(FUZZ_MAX_LEN)" FUZZ_TARGETS="$(FUZZ_TARGETS)" Fuzz/run.sh

# The chaos run (not part of `make test`; minutes): the release binary, a recording upstream
# that fsyncs before its 250, clients that retry like MTAs, every fault on; fails unless no
# message is lost, phantom or duplicated without cause. It first checks itself against
# Postern's test-only early-ack switch, which it must catch. See Chaos/README.md.
#   make chaos CHAOS_MESSAGES=2000 CHAOS_ARGS="--no-postern-restart --seed 7"
CHAOS_MESSAGES ?= 10000
CHAOS_ARGS ?=
chaos: deps
	@.ci/ensure-packages.sh cmd:python3=python3
	@.ci/ensure-packages.sh cmd:redis-server=redis-server || echo "chaos: without redis-server the Redis fault is off"
	$(SWIFT) build -c release --product postern
	python3 Chaos/chaos.py --self-check --messages $(CHAOS_MESSAGES) $(CHAOS_ARGS)

# The broken mode alone: a short run with POSTERN_TEST_UNSAFE_EARLY_ACK=1 (250 before the
# upstream answers). The harness exits non-zero with lost > 0; this target succeeds when it does.
chaos-broken: deps
	@.ci/ensure-packages.sh cmd:python3=python3
	@.ci/ensure-packages.sh cmd:redis-server=redis-server || echo "chaos: without redis-server the Redis fault is off"
	$(SWIFT) build -c release --product postern
	@mkdir -p .build; { python3 Chaos/chaos.py --broken --messages 300 $(CHAOS_ARGS); echo $$? > .build/chaos-broken.status; } \
		| tee .build/chaos-broken.out; \
	status=$$(cat .build/chaos-broken.status); \
	if [ "$$status" -eq 1 ] && grep -Eq '^chaos: BROKEN .* lost=[1-9]' .build/chaos-broken.out; then \
		echo "chaos-broken: caught (the harness failed the run with lost > 0), as it must be"; \
	else \
		echo "chaos-broken: NOT caught (harness status $$status)"; exit 1; \
	fi

clean:
	rm -rf .build var
