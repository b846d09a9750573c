# nfhelper: build, demo and tests. Tests and the demo need root (network
# namespaces, nftables, NFQUEUE); `make deps` installs what they use.

GO      ?= go
BIN     ?= bin
PKGS    := vsftpd lftp curl nftables conntrack conntrackd keepalived iproute2 python3 procps \
           libhiredis0.14 libmemcached11 libmemcachedutil2 libpcre2-posix3 libsodium23 libcap2 \
           tftp-hpa atftp libwrap0 libpcre2-8-0

.PHONY: all build deps demo test unit integration fuzz soak bench bench-ftp bench-tftp bench-all bench-e2e bench-queue clean \
        deb deb-deps deb-check deb-test vm-deps vmtest vmnft vmsuite vmdeb vmreport

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
# real servers behind 198.51.100.10:21 / [2001:db8:1::10]:21; a transfer
# each way, then one server stopped (its tcp check takes it out) and back.
demo: deps
	$(GO) run ./integration/demo

test: deps unit integration

# staticcheck at the version the module proxy serves, run through the go
# command (no separate install); the second run sees the integration files.
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2

unit:
	$(GO) vet ./...
	$(GO) vet -tags integration ./integration/... ./nfq/... ./daemon/...
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags integration ./integration/... ./nfq/... ./daemon/...
	$(GO) test -race -count=1 ./...

# -shuffle on: each test sets up what it needs (the daemon, its state), so
# the order they run in must not matter; the seed is printed to rerun one.
integration:
	$(GO) test -tags integration -count=1 -shuffle on -v ./integration/... ./nfq/... ./daemon/...

# Every fuzz target for FUZZTIME each (go test -fuzz takes one at a time):
# every target of these packages, a minute each by default.
FUZZTIME ?= 60s
fuzz:
	@set -e; for pkg in ./nfq ./nfq/packet ./helpers/ftp ./config ./ipvs ./kernel ./health; do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$t"; $(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

# Mixed FTP sessions through the VIPs while the daemon is reloaded and
# restarted in place (SIGUSR2); reports failed sessions (target: none).
# SOAK_ARGS=-crash alternates the restarts with kill -9 and a new start.
SOAKTIME ?= 2m
soak: deps
	$(GO) run ./integration/soak -duration $(SOAKTIME) $(SOAK_ARGS)

# Benchmarks (root for the second part, about 7 minutes in all): the Go
# micro-benchmarks, then bench-ftp. Not run by CI.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./nfq ./ipvs ./helpers/... ./health
	$(MAKE) --no-print-directory bench-ftp

# nfhelperd side by side with nft DNAT + the kernel's FTP helpers, plain DNAT
# and direct access, in throw-away namespaces: per-packet verdict path, FTP
# sessions/s (nfhelperd kernel- and daemon-scheduled), data throughput,
# packets and CPU per session, control round trips, daemon memory at
# 0/10k/100k connections. Writes the
# "Side by side" section of docs/BENCHMARKS.md (FTPBENCH_DOC= to skip).
# Options: FTPBENCH_ARGS='-rounds 5 -duration 5s -workers 8 -conns 10000,100000 ...'.
FTPBENCH_DOC  ?= docs/BENCHMARKS.md
FTPBENCH_ARGS ?=
bench-ftp: deps
	$(GO) build -o $(BIN)/ftpbench ./integration/bench/ftpbench
	$(BIN)/ftpbench $(if $(FTPBENCH_DOC),-doc $(FTPBENCH_DOC)) -out $(BIN)/ftpbench.md $(FTPBENCH_ARGS)

# nfhelperd's TFTP helper side by side with nft DNAT + the kernel's TFTP
# helper (ct helper "tftp": nf_conntrack_tftp/nf_nat_tftp), one atftpd on
# rs1, in throw-away namespaces: the time of one 64 MiB RRQ (blksize 1468
# and 512), small-file RRQs/s from concurrent clients, the machine's and
# the daemon's CPU and the packets queued per transfer; about 2 minutes.
# Results in $(BIN)/tftpbench-results/. Options: TFTPBENCH_ARGS='-rounds 5
# -duration 10s -workers 16 -bigsize 67108864 -blksizes 1468 -server tftpd-hpa'.
TFTPBENCH_ARGS ?=
bench-tftp: deps
	$(GO) build -o $(BIN)/tftpbench ./integration/bench/tftpbench
	$(BIN)/tftpbench -out $(BIN)/tftpbench-results $(TFTPBENCH_ARGS)

# Every benchmark: bench, bench-e2e and bench-queue.
bench-all: bench bench-e2e bench-queue

# End-to-end connection rate (root): kernel DNAT vs nfhelperd through the VIP
# with each scheduler (rr, wrr, sh, mh in the kernel; lc, wlc in the daemon),
# then the memory of 100,000 persistent clients (kernel map vs daemon), in
# throw-away namespaces; about 4 minutes. Options: BENCH_ARGS='-rounds 3
# -duration 5s -scheds rr,lc -persist 100000 ...'.
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

# Debian's stock kernel (linux-image-amd64) under qemu, software emulation,
# with this machine's userland over 9p (integration/vm): the Debian package
# on a fresh boot, the integration suite and the reference report (IPVS +
# ip_vs_ftp, nft DNAT + nf_nat_ftp, nfhelperd) on a kernel with IPVS,
# nft_queue and NFQA_CT. Each boots like a fresh router: no netfilter module
# is preloaded, the kernel autoloads what is used; the suite's guest loads
# nf_nat_ftp first, as the package's unit does before the daemon starts
# (no nftables rule loads it; the kernel's FTP helper needs it to serve
# new sessions while the daemon is down). The kernel is
# fetched with apt-get download into /var/cache/nfhelper-vm (NFHVM_CACHE)
# once; binaries are built on the host into $(VMSHARE), the guest's writable
# share. The suite runs once per datapath of VM_DATAPATHS
# (NFHELPER_DATAPATH=...; `default`: the datapath the daemon picks).
# VMTEST_ARGS go to the test binary (-test.run/-test.skip; e.g.
# VMTEST_ARGS="-test.run '^TestKernelSched'" runs the kernel-scheduling
# tests alone, on both datapaths). By default the
# VM skips TestReloadUnderTraffic: under software emulation its transfers
# (paced at 512 KiB/s) end before the reloads are checked, which it reports
# as a failure of the test itself, not of the daemon.
VM_PKGS      := qemu-system-x86 busybox-static cpio kmod ipvsadm keepalived
VMSHARE      ?= $(BIN)/vm
VMTIMEOUT    ?= 45m
VM_DATAPATHS ?= compat kernel
VMTEST_ARGS  ?= -test.skip '^TestReloadUnderTraffic$$'
VM           := $(GO) run ./integration/vm -share $(VMSHARE) -timeout $(VMTIMEOUT)

vm-deps:
	@missing=$$(for p in $(VM_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Every part runs; vmtest fails if any failed.
vmtest: deps vm-deps
	@rc=0; $(MAKE) --no-print-directory vmdeb || rc=1; \
	$(MAKE) --no-print-directory vmnft || rc=1; \
	$(MAKE) --no-print-directory vmsuite || rc=1; \
	$(MAKE) --no-print-directory vmreport || rc=1; exit $$rc

vmsuite: deps vm-deps
	@rc=0; for dp in $(or $(VM_DATAPATHS),default); do \
		env=; [ "$$dp" = default ] || env="-env NFHELPER_DATAPATH=$$dp"; \
		echo "== integration suite in the VM (datapath: $$dp)"; \
		$(VM) -prebuild -modprobe nf_nat_ftp -modprobe nf_nat_tftp $$env -- $(VMSHARE)/integration.test -test.v -test.count=1 -test.timeout 40m $(VMTEST_ARGS) || \
			{ rc=1; echo "== integration suite in the VM (datapath: $$dp): FAILED"; }; \
	done; exit $$rc

# Package nft's tests (rulesets, goldens, packets through them) on Debian's
# kernel: its own modules, its kernel datapath's table (ruleset-kernel.nft).
vmnft: deps vm-deps
	@echo "== package nft's tests in the VM"; mkdir -p $(VMSHARE); \
	$(GO) test -c -tags integration -o $(VMSHARE)/nft.test ./nft && \
	$(VM) -modprobe nf_nat_tftp -- /bin/sh -c 'cd $(CURDIR)/nft && exec $(abspath $(VMSHARE))/nft.test -test.v -test.count=1'

# The package `make deb` built, unpacked in a freshly booted guest (nothing
# preloaded, as on a router after boot), started with each configuration
# shape the docs show (balancer, add-on helpers, both) in one boot; then the
# xtables target's module loaded by the daemon's probe where an inet table
# cannot autoload it (integration/deb_package_test.go).
vmdeb: deps vm-deps deb
	@deb=$$(ls -t $(BIN)/nfhelper_*.deb | head -n 1); echo "== the Debian package in a fresh VM boot: $$deb"; \
	$(VM) -prebuild -env NFH_DEB=$$(realpath $$deb) -env NFH_FRESH_BOOT=1 -- $(VMSHARE)/integration.test -test.v -test.count=1 \
		-test.run '^(TestDebianPackage|TestXtQueueAutoload)$$'

# docs/REFERENCES.md is a copy of $(VMSHARE)/REFERENCES.md from this target.
# The guest preloads nothing; IPVS's FTP helper (with its ports) and the
# kernel's FTP NAT helper, which nothing autoloads for an nft ct helper, are
# loaded by hand as their users would, and the report says so.
vmreport: deps vm-deps
	$(VM) -prebuild -modprobe 'ip_vs_ftp ports=21,2321' -modprobe nf_nat_ftp -- $(VMSHARE)/reference -out $(VMSHARE)/REFERENCES.md
