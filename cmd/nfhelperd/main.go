// Command nfhelperd balances TCP services to real servers through the kernel's
// NAT and helps their FTP control connections from userspace: it rewrites
// addresses, corrects sequence numbers and opens data channels in nftables.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/nfhelper/nfhelper/config"
	_ "github.com/nfhelper/nfhelper/helpers/ftp"
)

func main() {
	path := flag.String("config", "/etc/nfhelper/nfhelperd.yaml", "configuration file")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "nfhelperd: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	cfg, err := config.Load(*path)
	if err != nil {
		log.Error("configuration", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, *path, cfg, log); err != nil {
		log.Error("stopped", "err", err)
		os.Exit(1)
	}
}
