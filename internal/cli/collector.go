package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/tapstream/tapstream/internal/bytesize"
	"github.com/tapstream/tapstream/internal/collector"
)

type collectorFlags struct {
	listen          string
	data            string
	insecure        bool
	fsync           bool
	maxMessage      bytesize.Size
	shutdownTimeout time.Duration
}

func newCollectorCmd(g *globals) *cobra.Command {
	f := &collectorFlags{maxMessage: collector.DefaultMaxMessageBytes}
	cmd := &cobra.Command{
		Use:   "collector",
		Short: "Receive agents' streams and store them as pcap",
		Long: fmt.Sprintf(`Receive packet streams from agents and store each source as pcap files:

  DATA/pcap/<source>/<source>-<UTC time of first packet>.pcap

Files are nanosecond pcap with the source's link type and snaplen, written
under their final name and closed once, so Arkime's capture --monitor can
watch DATA/pcap. The collector listens on port %d by default.

Stop it with SIGINT or SIGTERM: it stores and acks the batches in hand,
closes every file and prints per-source counters.`, collector.DefaultPort),
		Example: `  tapstream collector --insecure --data /var/lib/tapstream
  tapstream collector --insecure --listen 0.0.0.0:7447   # plaintext on the network: warns`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runCollector(cmd, g, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", "", fmt.Sprintf("address to listen on (default 127.0.0.1:%d with --insecure)", collector.DefaultPort))
	fl.StringVar(&f.data, "data", "./tapstream-data", "data directory: pcap files and state")
	fl.BoolVar(&f.insecure, "insecure", false, "plaintext and no authentication (listens on loopback unless --listen says otherwise)")
	fl.BoolVar(&f.fsync, "fsync", false, "sync each batch to disk before acking it")
	fl.Var(&f.maxMessage, "max-message-size", "largest message accepted from an agent")
	fl.DurationVar(&f.shutdownTimeout, "shutdown-timeout", collector.DefaultShutdownTimeout, "how long shutdown waits for streams to finish")
	return cmd
}

func runCollector(cmd *cobra.Command, g *globals, f *collectorFlags) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	if !f.insecure {
		return usagef("TLS is not available in this version yet: start the collector with --insecure (plaintext, no authentication, loopback by default)")
	}
	listen := f.listen
	if listen == "" {
		listen = net.JoinHostPort("127.0.0.1", strconv.Itoa(collector.DefaultPort))
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return usagef("--listen %q: want HOST:PORT: %v", listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		log.Warn("INSECURE: plaintext, unauthenticated collector listening beyond loopback; anyone who reaches this port can send packets and read nothing is encrypted",
			"listen", listen)
	}
	srv, err := collector.New(collector.Config{
		DataDir:         f.data,
		MaxMessageBytes: int(f.maxMessage),
		Fsync:           f.fsync,
		ShutdownTimeout: f.shutdownTimeout,
		Logger:          log,
	})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	log.Info("collector listening", "addr", lis.Addr().String(), "data", f.data, "tls", false)
	err = srv.Serve(cmd.Context(), lis)
	sources, serr := srv.Sources(context.Background())
	for _, t := range sources {
		log.Info("source totals", "source", t.Name, "uuid", t.UUID, "packets", t.Packets, "bytes", t.Bytes,
			"batches", t.Batches, "duplicate_batches", t.Duplicates, "last_seq", t.LastSeq,
			"kernel_drops", t.KernelDrops, "interface_drops", t.InterfaceDrops, "agent_drops", t.AgentDrops)
	}
	if cerr := srv.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	log.Info("collector stopped")
	return errors.Join(err, serr)
}
