// Command nfhelperd balances TCP services to real servers through the kernel's
// NAT and helps their FTP control connections from userspace: it rewrites
// addresses, corrects sequence numbers and opens data channels in nftables.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/nfhelper/nfhelper/config"
	_ "github.com/nfhelper/nfhelper/helpers/ftp"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	path := flag.String("config", "/etc/nfhelper/nfhelperd.yaml", "configuration file")
	showVersion := flag.Bool("version", false, "print the version and exit")
	check := flag.Bool("check-config", false, "validate the configuration file, print a summary and exit (0 if valid); touches no kernel state")
	checkKernel := flag.Bool("check", false, "print what the kernel offers, the datapath nfhelperd would run and the ruleset mistakes it can see, and exit (1 if a check fails)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "nfhelperd: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println("nfhelperd", version)
		return
	}
	if *check {
		os.Exit(checkConfig(*path))
	}
	if *checkKernel {
		// The configuration, where it can be read, tells which datapath a
		// start would choose; without it, the kernel alone.
		cfg, err := config.Load(*path)
		if err != nil {
			cfg = &config.Config{}
		}
		os.Exit(checkKernelFeatures(os.Stdout, cfg))
	}
	log := newLogger(os.Stderr)

	cfg, err := config.Load(*path)
	if err != nil {
		logErrors(log, "configuration", err)
		os.Exit(1)
	}
	exe := selfPath() // before an upgrade can replace the file
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	inherit, err := run(ctx, *path, cfg, log)
	if err != nil {
		log.Error("stopped", "err", err)
		os.Exit(1)
	}
	if inherit != nil {
		err := handOver(exe, inherit)
		// Still here: the queues are bound to sockets nobody reads, and
		// the kernel bypasses them once their backlog is full. A
		// supervisor restarts the daemon, which then binds them anew.
		log.Error("hand-over failed", "exe", exe, "err", err)
		os.Exit(1)
	}
}

// checkConfig validates the file at path without touching the kernel: it
// prints a summary to stdout and returns 0, or prints every error, one a
// line, to stderr and returns 1.
func checkConfig(path string) int {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	servers := 0
	for _, s := range cfg.Services {
		servers += len(s.RealServers)
	}
	fmt.Printf("%s: ok: %s (%s), %s\n", path, count(len(cfg.Services), "service"), count(servers, "real server"), count(len(cfg.Helpers), "helper"))
	return 0
}

func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
