package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tapstream/tapstream/internal/admission"
	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/bytesize"
	"github.com/tapstream/tapstream/internal/collector"
	"github.com/tapstream/tapstream/internal/datadir"
	"github.com/tapstream/tapstream/internal/pcapfile"
	"github.com/tapstream/tapstream/internal/termsafe"
)

type collectorFlags struct {
	listen           string
	data             string
	insecure         bool
	tlsCert          string
	tlsKey           string
	tlsSANs          []string
	clientCA         string
	uriPrefix        string
	maxConns         int
	maxConnsPerIP    int
	fsync            bool
	maxMessage       bytesize.Size
	decompressMemory bytesize.Size
	shutdownTimeout  time.Duration
	maxSources       int
	idleTimeout      time.Duration
	maxPreAuthConns  int
	helloTimeout     time.Duration
	trustedProxies   []string

	format        string
	rotateSize    bytesize.Size
	rotateTime    time.Duration
	rotatePackets uint64
	maxStorage    bytesize.Size
	maxAge        time.Duration
	maxClockAhead time.Duration
	minFree       string
	status        time.Duration
}

func newCollectorCmd(g *globals) *cobra.Command {
	f := &collectorFlags{maxMessage: collector.DefaultMaxMessageBytes, rotateSize: collector.DefaultRotateSize,
		decompressMemory: collector.DefaultDecompressMemory}
	cmd := &cobra.Command{
		Use:   "collector",
		Short: "Receive agents' streams and store them as pcap",
		Long: fmt.Sprintf(`Receive packet streams from agents and store each source as pcap files:

  DATA/pcap/<source>/<source>-<UTC time of first packet>.pcap

Files are nanosecond pcap with the source's link type and snaplen (or
pcapng with the agent's host, interface, filter and drop counts, with
--format pcapng), written under their final name and closed once, when
complete, so Arkime's capture -R DATA/pcap --monitor --recursive ingests
each file once. A source's file rotates at --rotate-size, --rotate-time or
--rotate-packets, between batches, so no packet is split. Every file is
listed in the catalog (tapstream files) and can be cut by time and filter
(tapstream extract).

Retention deletes closed files once they are older than --max-age, while
all files take more than --max-storage, and while the disk has less than
--min-free free; a file being written is never deleted. When the disk is
full, or under --min-free with nothing left to delete, the collector stops
writing and acking and says so; agents keep their packets in their spools,
and writing resumes when space returns.

The collector listens on port %d by default.

It serves TLS. On first start it creates a CA and a server certificate in
DATA/tls (or takes yours with --tls-cert/--tls-key) and prints the CA's pin,
sha256:..., which agents pass with --pin. Agents authenticate with an API
token (tapstream token create --role agent) or a user and password
(tapstream user add), or with a client certificate signed by --client-ca.
--insecure turns TLS and authentication off and listens on loopback unless
--listen says otherwise.

A source belongs to the credential that first streamed it (a token, a user,
or a client certificate's subject); another credential is refused, by the
source's UUID or by its name, until an admin runs tapstream sources
reassign. One credential creates at most --max-sources-per-credential
sources. Revoking a token, disabling a user or reassigning a source ends
its live streams within seconds.

Stop it with SIGINT or SIGTERM: it stores and acks the batches in hand,
closes every file and prints per-source counters.`, collector.DefaultPort),
		Example: `  tapstream collector --data /var/lib/tapstream
  tapstream collector --data /var/lib/tapstream --tls-san capture.example.org
  tapstream collector --uri-prefix /tapstream --trusted-proxy 10.0.0.4/32   # behind nginx grpc_pass
  tapstream collector --insecure                     # plaintext on 127.0.0.1 only`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runCollector(cmd, g, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", "", fmt.Sprintf("address to listen on (default :%d, every interface; 127.0.0.1:%d with --insecure)", collector.DefaultPort, collector.DefaultPort))
	fl.StringVar(&f.data, "data", defaultDataDir(), "data directory: pcap files and state")
	fl.BoolVar(&f.insecure, "insecure", false, "plaintext and no authentication (listens on loopback unless --listen says otherwise)")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "server certificate (PEM, chain allowed) instead of the generated one")
	fl.StringVar(&f.tlsKey, "tls-key", "", "key of --tls-cert")
	fl.StringArrayVar(&f.tlsSANs, "tls-san", nil, "extra name or address for the generated certificate (repeatable)")
	fl.StringVar(&f.clientCA, "client-ca", "", "accept agents presenting a client certificate signed by this CA (PEM) instead of a token")
	fl.StringVar(&f.uriPrefix, "uri-prefix", "", "path prefix a proxy keeps in front of the gRPC path, e.g. /tapstream")
	fl.IntVar(&f.maxSources, "max-sources-per-credential", collector.DefaultMaxSourcesPerOwner, "sources one token, user or client certificate may create (-1: no limit)")
	fl.DurationVar(&f.idleTimeout, "stream-idle-timeout", collector.DefaultStreamIdleTimeout, "end a stream that sends no batch and no keepalive for this long (agents send a keepalive after a third of it)")
	fl.IntVar(&f.maxConns, "max-conns", collector.DefaultMaxConns, "authenticated connections at most, in all")
	fl.IntVar(&f.maxConnsPerIP, "max-conns-per-addr", collector.DefaultMaxConnsPerIP, "connections at most from one address (streams from one forwarded address behind a --trusted-proxy)")
	fl.IntVar(&f.maxPreAuthConns, "max-preauth-conns", collector.DefaultMaxPreAuthConns, "connections that have not authenticated yet, at most; past it the oldest of them is closed")
	fl.DurationVar(&f.helloTimeout, "hello-timeout", collector.DefaultHelloTimeout, "time a new connection has for its TLS handshake and first authenticated Hello")
	fl.StringArrayVar(&f.trustedProxies, "trusted-proxy", nil, "CIDR of a proxy (nginx) whose X-Real-IP / X-Forwarded-For is believed; its own connections are not capped per address (repeatable)")
	fl.BoolVar(&f.fsync, "fsync", false, "sync each batch to disk before acking it")
	fl.Var(&f.maxMessage, "max-message-size", "largest message accepted from an agent")
	fl.Var(&f.decompressMemory, "decompress-memory", "memory all streams share for decompressing batches; a stream waits its turn beyond it")
	fl.DurationVar(&f.shutdownTimeout, "shutdown-timeout", collector.DefaultShutdownTimeout, "how long shutdown waits for streams to finish")
	fl.DurationVar(&f.status, "status-interval", time.Minute, "log each live source's counters and rates this often (0: never)")
	fl.StringVar(&f.format, "format", "pcap", "file format: pcap (nanosecond) or pcapng (with capture metadata)")
	fl.Var(&f.rotateSize, "rotate-size", "start a source's next file when this one would pass this size (0: no limit)")
	fl.DurationVar(&f.rotateTime, "rotate-time", collector.DefaultRotateTime, "start a source's next file when this one is this old (0: no limit)")
	fl.Uint64Var(&f.rotatePackets, "rotate-packets", 0, "start a source's next file when this one would pass this many packets (0: no limit)")
	fl.Var(&f.maxStorage, "max-storage", "delete the oldest closed files while all files take more than this (0: no limit)")
	fl.DurationVar(&f.maxAge, "max-age", 0, "delete files closed longer ago than this, e.g. 720h (0: keep)")
	fl.DurationVar(&f.maxClockAhead, "max-clock-ahead", collector.DefaultMaxClockAhead, "refuse batches stamped further than this past the collector's clock (negative: no limit)")
	fl.StringVar(&f.minFree, "min-free", "", "keep this much of the disk free, as PERCENT (5%) or SIZE (10GB): delete the oldest closed files, then pause")
	return cmd
}

func runCollector(cmd *cobra.Command, g *globals, f *collectorFlags) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	listen := f.listen
	if listen == "" {
		host := ""
		if f.insecure {
			host = "127.0.0.1"
		}
		listen = net.JoinHostPort(host, strconv.Itoa(collector.DefaultPort))
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return usagef("--listen %q: want HOST:PORT: %v", listen, err)
	}
	proxies, err := admission.ParseTrustedProxies(f.trustedProxies)
	if err != nil {
		return usagef("--trusted-proxy: %v", err)
	}
	if err := prepareDataDir(f.data); err != nil {
		return err
	}
	var tlsCfg *tls.Config
	var id *auth.Identity
	if f.insecure {
		if f.tlsCert != "" || f.clientCA != "" {
			return usagef("--insecure turns TLS off: drop it, or drop --tls-cert/--client-ca")
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			log.Warn("INSECURE: plaintext, unauthenticated collector listening beyond loopback; anyone who reaches this port can send packets, and nothing is encrypted",
				"listen", listen)
		}
	} else {
		if (f.tlsCert == "") != (f.tlsKey == "") {
			return usagef("--tls-cert and --tls-key go together")
		}
		if f.tlsCert != "" {
			id, err = auth.LoadIdentity(f.tlsCert, f.tlsKey)
		} else {
			id, err = auth.LoadOrCreateIdentity(filepath.Join(f.data, "tls"), append(auth.DefaultSANs(), f.tlsSANs...))
		}
		if err != nil {
			return err
		}
		if tlsCfg, err = auth.ServerTLS(id, f.clientCA); err != nil {
			return err
		}
	}
	format, err := pcapfile.ParseFormat(f.format)
	if err != nil {
		return usagef("--format: %v", err)
	}
	minFree, err := parseMinFree(f.minFree)
	if err != nil {
		return usagef("--min-free: %v", err)
	}
	srv, err := collector.New(collector.Config{
		Format:           format,
		RotateSize:       int64(f.rotateSize),
		RotateTime:       f.rotateTime,
		RotatePackets:    f.rotatePackets,
		MaxStorage:       int64(f.maxStorage),
		MaxAge:           f.maxAge,
		MaxClockAhead:    f.maxClockAhead,
		DecompressMemory: int64(f.decompressMemory),
		MinFree:          minFree,
		StatusInterval:   f.status,
		DataDir:          f.data,
		MaxMessageBytes:  int(f.maxMessage),
		Fsync:            f.fsync,
		ShutdownTimeout:  f.shutdownTimeout,
		Logger:           log,
		TLS:              tlsCfg,
		URIPrefix:        f.uriPrefix,
		MaxConns:         f.maxConns,
		MaxConnsPerIP:    f.maxConnsPerIP,

		MaxSourcesPerOwner: f.maxSources,
		StreamIdleTimeout:  f.idleTimeout,
		MaxPreAuthConns:    f.maxPreAuthConns,
		HelloTimeout:       f.helloTimeout,
		TrustedProxies:     proxies,
	})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	log.Info("collector listening", "addr", lis.Addr().String(), "data", f.data, "tls", tlsCfg != nil, "uri_prefix", f.uriPrefix,
		"format", format, "rotate_size", f.rotateSize, "rotate_time", f.rotateTime, "max_storage", f.maxStorage,
		"max_age", f.maxAge, "min_free", minFree)
	if id != nil {
		printPin(g.stderr, id, f.data, port)
	}
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

// prepareDataDir makes the data directory if it is missing, refuses one
// that another user could change (datadir.Check), and makes the database
// file, if missing, readable by its owner and group only: SQLite would
// give it (and its -wal and -shm files, which take its mode) whatever the
// umask allows.
func prepareDataDir(data string) error {
	if err := os.MkdirAll(data, 0o750); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	if err := datadir.Check(data); err != nil {
		return err
	}
	db, err := os.OpenFile(filepath.Join(data, "tapstream.db"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	switch {
	case errors.Is(err, fs.ErrExist):
		return nil
	case err != nil:
		return fmt.Errorf("create the database: %w", err)
	}
	return db.Close()
}

// parseMinFree reads PERCENT% or SIZE.
func parseMinFree(s string) (collector.MinFree, error) {
	if s == "" || s == "0" {
		return collector.MinFree{}, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || v < 0 || v >= 100 {
			return collector.MinFree{}, fmt.Errorf("%q: want a percentage from 0 to 99, or a size such as 10GB", s)
		}
		return collector.MinFree{Percent: v}, nil
	}
	v, err := bytesize.Parse(s)
	if err != nil {
		return collector.MinFree{}, fmt.Errorf("%q: want a percentage such as 5%% or a size such as 10GB", s)
	}
	return collector.MinFree{Bytes: int64(v)}, nil
}

// printPin tells the operator how agents trust this collector.
func printPin(w io.Writer, id *auth.Identity, data, port string) {
	fmt.Fprintf(w, "\ncollector identity: %s\n", id.Pin())
	fmt.Fprintf(w, "  (CA certificate: %s)\n", termsafe.String(id.CAFile))
	fmt.Fprintf(w, "agents connect with:\n")
	fmt.Fprintf(w, "  tapstream agent --connect <this host>:%s --pin %s \\\n", port, id.Pin())
	fmt.Fprintf(w, "      --token-file <file holding the token> --source eth0\n")
	fmt.Fprintf(w, "make a token with:\n  tapstream token create --data %s --role agent\n\n", termsafe.String(data))
}
