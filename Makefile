# Postern — build, run and test.
#   make run            start Postern on the bundled default configuration (127.0.0.1:2525 → var/maildir)
#   make run CONFIG=f   start it on configuration file f
#   make test           run the whole test suite (unit + integration against real peers)

SWIFT ?= swift
CONFIG ?=
# Packages the build links against.
BUILD_PACKAGES := lib:libpcre2-8=libpcre2-dev lib:libmaxminddb=libmaxminddb-dev
# Real peers the integration tests drive.
TEST_PACKAGES := cmd:swaks=swaks cmd:smtp-sink=postfix cmd:openssl=openssl cmd:python3=python3

.PHONY: all build run test check deps test-deps clean bench-policy

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

clean:
	rm -rf .build var
