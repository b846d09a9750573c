// Command nfhelperd balances TCP services to real servers through the kernel's
// NAT and helps their FTP control connections from userspace: it rewrites
// addresses, corrects sequence numbers and opens data channels in nftables.
//
// This command reads the flags and the configuration, sets up logging and
// turns signals into the steps of a daemon.Daemon: SIGTERM and SIGINT stop
// it, SIGHUP reloads the configuration, SIGUSR2 hands over to a successor in
// place.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/daemon"
	_ "github.com/nfhelper/nfhelper/helpers/ftp"
	_ "github.com/nfhelper/nfhelper/helpers/tftp"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	path := flag.String("config", "/etc/nfhelper/nfhelperd.yaml", "configuration file")
	stateDir := flag.String("state-dir", defaultStateDir(), "directory of the state file, which keeps nfhelperctl's overrides and the servers' health across restarts ($"+envStateDir+" changes the default)")
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
		os.Exit(daemon.Check(os.Stdout, cfg))
	}
	log := newLogger(os.Stderr)

	cfg, err := config.Load(*path)
	if err != nil {
		logErrors(log, "configuration", err)
		os.Exit(1)
	}
	exe := daemon.SelfPath() // before an upgrade can replace the file
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d := daemon.New(cfg, daemon.Options{ConfigPath: *path, Log: log, StateDir: *stateDir})
	if err := d.Start(ctx); err != nil {
		log.Error("stopped", "err", err)
		os.Exit(1)
	}
	inherit, err := run(ctx, d, *path, log)
	if err != nil {
		log.Error("stopped", "err", err)
		os.Exit(1)
	}
	if inherit != nil {
		err := daemon.Exec(exe, inherit)
		// Still here: the queues are bound to sockets nobody reads, and
		// the kernel bypasses them once their backlog is full. A
		// supervisor restarts the daemon, which then binds them anew.
		log.Error("hand-over failed", "exe", exe, "err", err)
		os.Exit(1)
	}
}

// envStateDir, when set, replaces the state directory's default: tests
// run daemons side by side, each with its own.
const envStateDir = "NFHELPER_STATE_DIR"

// defaultStateDir is the --state-dir default: systemd's StateDirectory.
func defaultStateDir() string {
	if dir := os.Getenv(envStateDir); dir != "" {
		return dir
	}
	return "/var/lib/nfhelper"
}

// run turns signals into d's steps until d stops (a full stop: the table
// goes) or hands over, which leaves the table and returns the queue sockets
// for the successor.
func run(ctx context.Context, d *daemon.Daemon, path string, log *slog.Logger) (inherit map[uint16]*os.File, err error) {
	hup, usr2 := make(chan os.Signal, 1), make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(hup)
	defer signal.Stop(usr2)
	for {
		select {
		case <-ctx.Done():
			d.Stop()
			return nil, nil
		case err := <-d.Failed():
			d.Stop()
			return nil, err
		case <-usr2:
			return d.HandOver(), nil
		case <-hup:
			reload(d, path, log)
		}
	}
}

// reload applies the configuration file as it is now; on any error the
// running configuration stays.
func reload(d *daemon.Daemon, path string, log *slog.Logger) {
	cfg, err := config.Load(path)
	if err == nil {
		err = d.Reload(cfg)
	}
	d.NoteReload(err)
	if err != nil {
		logErrors(log, "reload failed; the running configuration stays", err)
		return
	}
	log.Info("reloaded", "config", path)
}

// logErrors logs err, one entry per configuration error it holds.
func logErrors(log *slog.Logger, msg string, err error) {
	var errs config.Errors
	if !errors.As(err, &errs) {
		log.Error(msg, "err", err)
		return
	}
	for _, e := range errs {
		log.Error(msg, "err", e.Error())
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
	for _, w := range cfg.ECMPWarnings() {
		fmt.Println("warning: ecmp:", w)
	}
	return 0
}

func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
