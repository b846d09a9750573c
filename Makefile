# nfhelper: build, demo and tests. Tests and the demo need root (network
# namespaces, nftables, NFQUEUE); `make deps` installs what they use.

GO      ?= go
BIN     ?= bin
PKGS    := vsftpd lftp curl nftables conntrack iproute2 python3 procps \
           libhiredis0.14 libmemcached11 libmemcachedutil2 libpcre2-posix3 libsodium23 libcap2

.PHONY: all build deps demo test unit integration fuzz bench bench-e2e clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# Debian packages the demo and the integration tests run.
deps:
	@missing=$$(for p in $(PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The demo topology: a client, a router running nfhelperd, and two vsftpd
# real servers behind 198.51.100.10:21 / [2001:db8:1::10]:21.
demo: deps
	$(GO) run ./integration/demo

test: deps unit integration

unit:
	$(GO) vet ./...
	$(GO) vet -tags integration ./integration/...
	$(GO) test -race -count=1 ./...

integration:
	$(GO) test -tags integration -count=1 -v ./integration/...

# Every fuzz target for FUZZTIME each (go test -fuzz takes one at a time).
FUZZTIME ?= 30s
fuzz:
	@set -e; for pkg in ./nfq ./helpers/ftp; do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$t"; $(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./nfq ./ipvs ./helpers/...

# End-to-end connection rate (root): kernel DNAT vs nfhelperd through the VIP,
# in throw-away namespaces. Options: BENCH_ARGS='-rounds 3 -duration 5s ...'.
bench-e2e: deps
	$(GO) run ./integration/bench $(BENCH_ARGS)

clean:
	rm -rf $(BIN)
