// Command tapstream is a remote full-packet capture system: agents capture
// packets on remote hosts and stream them to a collector that writes pcap.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tapstream/tapstream/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, restore the default action so that a second
	// one ends the process at once.
	context.AfterFunc(ctx, stop)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
