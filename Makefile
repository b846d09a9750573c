# nfhelper: build, demo and tests. Tests and the demo need root (network
# namespaces, nftables, NFQUEUE); `make deps` installs what they use.

GO      ?= go
BIN     ?= bin
PKGS    := vsftpd lftp curl nftables conntrack iproute2 python3 procps \
           libhiredis0.14 libmemcached11 libmemcachedutil2 libpcre2-posix3 libsodium23 libcap2

.PHONY: all build deps demo test unit integration fuzz soak bench bench-e2e bench-queue clean \
        deb deb-deps deb-check deb-test

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
	$(GO) vet -tags integration ./integration/... ./nfq/...
	$(GO) test -race -count=1 ./...

integration:
	$(GO) test -tags integration -count=1 -v ./integration/... ./nfq/...

# Every fuzz target for FUZZTIME each (go test -fuzz takes one at a time):
# every target of these packages, a minute each by default.
FUZZTIME ?= 60s
fuzz:
	@set -e; for pkg in ./nfq ./helpers/ftp ./config ./ipvs ./kernel; do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$t"; $(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

# Mixed FTP sessions through the VIPs while the daemon is reloaded and
# restarted (SIGTERM and SIGKILL); reports failed sessions (target: none).
SOAKTIME ?= 2m
soak: deps
	$(GO) run ./integration/soak -duration $(SOAKTIME)

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./nfq ./ipvs ./helpers/...

# End-to-end connection rate (root): kernel DNAT vs nfhelperd through the VIP,
# in throw-away namespaces. Options: BENCH_ARGS='-rounds 3 -duration 5s ...'.
bench-e2e: deps
	$(GO) run ./integration/bench $(BENCH_ARGS)

# NFQUEUE throughput (root): the C consumer on libnetfilter_queue against
# package nfq, in a throw-away namespace; see docs/BENCHMARKS.md. Options:
# QUEUE_BENCH_ARGS='-rounds 5 -duration 3s -impls c,nfq -queues 1,2 -v'.
QUEUE_BENCH_PKGS := build-essential libnetfilter-queue-dev
bench-queue:
	@missing=$$(for p in $(QUEUE_BENCH_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(MAKE) -C integration/bench/cqueue
	$(GO) build -o $(BIN)/queuebench ./integration/bench/queuebench
	$(BIN)/queuebench -cqueue integration/bench/cqueue/cqueue $(QUEUE_BENCH_ARGS)

clean:
	rm -rf $(BIN)
	$(MAKE) -C integration/bench/cqueue clean

# Debian package (debian/): $(BIN)/nfhelper_<version>_<arch>.deb, built by
# dpkg-buildpackage in a copy of the tree under $(BIN)/deb. The version comes
# from git and debian/changelog (see debian/build-deb.sh); DEB_VERSION=...
# sets it. deb-check lints the package and scores its systemd unit;
# deb-test installs it on this machine, runs the demo with the installed
# daemon, removes and purges it, then runs its unit under systemd in a
# throw-away container (root; see debian/tests/).
DEB_PKGS := build-essential debhelper dpkg-dev lintian systemd systemd-container man-db nftables util-linux

deb-deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

deb: deb-deps
	GO="$$(command -v $(GO))" GOMODCACHE="$$($(GO) env GOMODCACHE)" GOCACHE="$$($(GO) env GOCACHE)" \
		debian/build-deb.sh $(BIN)

deb-check: deb
	lintian --info --fail-on error,warning $(BIN)/deb/nfhelper_*.changes
	@set -e; root=$$(mktemp -d); trap 'rm -rf "$$root"' EXIT; \
	dpkg-deb -x $(BIN)/nfhelper_*.deb "$$root"; \
	echo "systemd-analyze security --offline=true nfhelperd.service"; \
	systemd-analyze security --offline=true --no-pager --root="$$root" nfhelperd.service | grep -i 'overall exposure'

deb-test: deb deps
	debian/tests/install-test.sh $(BIN)/nfhelper_*.deb
	debian/tests/systemd-test.sh $(BIN)/nfhelper_*.deb
