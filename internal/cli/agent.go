package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tapstream/tapstream/internal/agent"
	"github.com/tapstream/tapstream/internal/bytesize"
	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/source"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

type agentFlags struct {
	connect      string
	sources      []string
	filter       string
	snaplen      int
	promisc      bool
	backend      string
	count        int64
	size         bytesize.Size
	duration     time.Duration
	replaySpeed  float64
	batchSize    bytesize.Size
	batchDelay   time.Duration
	buffer       bytesize.Size
	compress     string
	spoolDir     string
	spoolSize    bytesize.Size
	spoolDelay   time.Duration
	ringSize     bytesize.Size
	blockSize    bytesize.Size
	blockTimeout time.Duration
	fanout       int
	insecure     bool
	pin          string
	caFile       string
	certFile     string
	keyFile      string
	token        string
	tokenFile    string
	user         string
	password     string
	passwordFile string
	endpoint     string
	disableRetry bool
	drainTimeout time.Duration
	fixedGPS     string
	status       time.Duration
}

func newAgentCmd(g *globals) *cobra.Command {
	f := &agentFlags{
		batchSize: agent.DefaultBatchSize,
		buffer:    agent.DefaultBuffer,
		spoolSize: agent.DefaultSpoolSize,
		ringSize:  capture.DefaultRingSize,
		blockSize: capture.DefaultBlockSize,
	}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Capture packets and stream them to a collector",
		Long: `Capture packets on this host and stream them to a collector.

Each --source is one stream. A source is an interface, Kismet style:

  IFACE[:name=NAME][,uuid=UUID]     e.g. eth0:name=web1

or a capture file (pcap or pcapng) to replay, which stops at its end:

  file:PATH[:name=NAME]

The name defaults to <hostname>-<iface>; the UUID is derived from the host's
machine ID and the name, so it is the same every time.

--filter takes tcpdump syntax and runs in the kernel. The agent always adds
a clause that leaves out its own connection to the collector.

Stop conditions (--count, --size, --duration) apply to each source. When a
source stops, or on SIGINT/SIGTERM, the agent sends what it has, waits for
the collector to ack it (at most --drain-timeout) and exits 0. A second
SIGINT quits at once.

Every batch stays with the agent until the collector acks it: in memory
(--buffer) and in the spool (--spool-dir, --spool-size), which survives a
restart. An agent killed and started again with the same sources and spool
sends what it had not delivered. Only when both are full are packets
dropped, and then they are counted and reported to the collector.`,
		Example: `  tapstream agent --connect collector:7447 --pin sha256:3b1f... --token-file /etc/tapstream/token --source eth0 --filter 'tcp port 443'
  tapstream agent --connect collector:7447 --ca collector-ca.crt --user sensor --password-file pw --source eth0:name=web1 --count 10000
  tapstream agent --connect proxy.example:443 --endpoint /tapstream --pin sha256:... --token-file token --source eth0
  tapstream agent --insecure --connect 127.0.0.1:7447 --source file:trace.pcap --replay-speed 1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(cmd, g, f) },
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.connect, "connect", "c", "", "collector address, HOST:PORT")
	fl.StringArrayVarP(&f.sources, "source", "s", nil, "source to capture: IFACE[:name=NAME][,uuid=UUID] or file:PATH[:name=NAME] (repeatable)")
	fl.StringVarP(&f.filter, "filter", "f", "", "capture filter in tcpdump syntax, applied in the kernel")
	fl.IntVar(&f.snaplen, "snaplen", capture.DefaultSnaplen, "bytes kept of each packet")
	fl.BoolVar(&f.promisc, "promisc", true, "put interfaces in promiscuous mode")
	fl.StringVar(&f.backend, "capture", capture.DefaultBackend(), "capture backend: afpacket (Linux) or pcap (libpcap/Npcap)")
	fl.Int64Var(&f.count, "count", 0, "stop each source after this many packets")
	fl.Var(&f.size, "size", "stop each source after this many captured bytes, e.g. 100MB")
	fl.DurationVar(&f.duration, "duration", 0, "stop each source after this long, e.g. 10m")
	fl.Float64Var(&f.replaySpeed, "replay-speed", 0, "file sources: 0 replays as fast as possible, 1 in real time, 2 twice as fast")
	fl.Var(&f.batchSize, "batch-size", "close a batch when it holds this many bytes")
	fl.DurationVar(&f.batchDelay, "batch-delay", agent.DefaultBatchDelay, "close a batch this long after its first packet")
	fl.Var(&f.buffer, "buffer", "memory for batches not yet acked, per source")
	fl.StringVar(&f.compress, "compress", agent.CompressAuto, "compress batches with zstd: none, zstd, or auto (only while it saves bandwidth and the CPU keeps up)")
	fl.StringVar(&f.spoolDir, "spool-dir", defaultSpoolDir(), `directory for batches not yet acked, kept across restarts ("none": memory only)`)
	fl.Var(&f.spoolSize, "spool-size", "disk for batches not yet acked, per source")
	fl.DurationVar(&f.spoolDelay, "spool-delay", agent.DefaultSpoolDelay, "write a batch to the spool once it has waited this long for its ack (0: at once, the safest and the costliest)")
	fl.Var(&f.ringSize, "ring-size", "kernel capture buffer per source")
	fl.Var(&f.blockSize, "block-size", "AF_PACKET ring block size (a power of two)")
	fl.DurationVar(&f.blockTimeout, "block-timeout", capture.DefaultBlockTimeout, "AF_PACKET: hand over a partly filled block after this long")
	fl.IntVar(&f.fanout, "fanout", 1, "AF_PACKET: spread each interface over this many readers (PACKET_FANOUT by flow), for multi-core hosts")
	fl.BoolVar(&f.insecure, "insecure", false, "plaintext and no authentication (the collector must run with --insecure too)")
	fl.StringVar(&f.pin, "pin", "", "trust the collector whose certificate chain holds this pin (sha256:..., printed by the collector)")
	fl.StringVar(&f.caFile, "ca", "", "trust collectors whose certificate is signed by a CA in this PEM file")
	fl.StringVar(&f.token, "token", "", "API token with role agent (visible to other local users in ps: prefer --token-file or TAPSTREAM_TOKEN)")
	fl.StringVar(&f.token, "apikey", "", "same as --token (Kismet's name)")
	fl.StringVar(&f.tokenFile, "token-file", "", "file holding the API token (tapstream token create --role agent on the collector)")
	fl.StringVar(&f.user, "user", "", "user name, for users made with tapstream user add")
	fl.StringVar(&f.password, "password", "", "password of --user (visible to other local users in ps: prefer --password-file or TAPSTREAM_PASSWORD)")
	fl.StringVar(&f.passwordFile, "password-file", "", "file holding the password of --user")
	fl.StringVar(&f.certFile, "cert", "", "client certificate (PEM), for collectors run with --client-ca")
	fl.StringVar(&f.keyFile, "key", "", "key of --cert")
	fl.StringVar(&f.endpoint, "endpoint", "", "path prefix of a proxy in front of the collector, e.g. /tapstream (its --uri-prefix)")
	fl.BoolVar(&f.disableRetry, "disable-retry", false, "exit non-zero on the first connection failure instead of reconnecting")
	fl.DurationVar(&f.status, "status-interval", agent.DefaultStatusInterval, "log each source's counters this often (0: never)")
	fl.StringVar(&f.fixedGPS, "fixed-gps", "", "the capture's fixed location, LAT,LON[,ALT] (degrees, metres), stored with its files")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", agent.DefaultDrainTimeout, "how long to wait for the last acks after capture stops")
	return cmd
}

func runAgent(cmd *cobra.Command, g *globals, f *agentFlags) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	for _, secret := range []struct{ flag, instead string }{
		{"token", "--token-file FILE or TAPSTREAM_TOKEN"},
		{"apikey", "--token-file FILE or TAPSTREAM_TOKEN"},
		{"password", "--password-file FILE or TAPSTREAM_PASSWORD"},
	} {
		if g.onCommandLine[secret.flag] {
			log.Warn("a secret on the command line is visible to every local user (ps, /proc/PID/cmdline); use "+secret.instead,
				"flag", "--"+secret.flag)
		}
	}
	if f.connect == "" {
		return usagef("--connect HOST:PORT is required")
	}
	if len(f.sources) == 0 {
		return usagef("at least one --source is required; `tapstream interfaces` lists this host's interfaces")
	}
	if f.filter != "" {
		if err := capture.CheckFilter(f.filter); err != nil {
			return err
		}
	}
	if f.tokenFile != "" {
		if f.token != "" {
			return usagef("--token-file and --token (or TAPSTREAM_TOKEN) both give a token: keep one")
		}
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return usagef("--token-file: %v", err)
		}
		warnIfShared(log, "--token-file", f.tokenFile)
		f.token = strings.TrimSpace(string(b))
		if f.token == "" {
			return usagef("--token-file %s is empty", f.tokenFile)
		}
	}
	if f.passwordFile != "" {
		b, err := os.ReadFile(f.passwordFile)
		if err != nil {
			return usagef("--password-file: %v", err)
		}
		warnIfShared(log, "--password-file", f.passwordFile)
		f.password = strings.TrimRight(string(b), "\r\n")
	}
	hostname, _ := os.Hostname()
	machineID := source.MachineID()
	specs := make([]source.Spec, 0, len(f.sources))
	for _, def := range f.sources {
		s, err := source.Parse(def, hostname, machineID)
		if err != nil {
			return usageError{err}
		}
		specs = append(specs, s)
	}
	gps, err := parseGPS(f.fixedGPS)
	if err != nil {
		return usagef("--fixed-gps: %v", err)
	}
	status := f.status
	if status == 0 {
		status = -1 // off
	}
	cfg := agent.Config{
		GPS:            gps,
		StatusInterval: status,
		Connect:        f.connect,
		Sources:        specs,
		Capture: capture.Config{
			Backend:      f.backend,
			Snaplen:      f.snaplen,
			Promisc:      f.promisc,
			RingSize:     int(f.ringSize),
			BlockSize:    int(f.blockSize),
			BlockTimeout: f.blockTimeout,
			Fanout:       f.fanout,
			Filter:       f.filter,
		},
		ReplaySpeed:  f.replaySpeed,
		Count:        f.count,
		Size:         int64(f.size),
		Duration:     f.duration,
		BatchSize:    int(f.batchSize),
		BatchDelay:   f.batchDelay,
		Buffer:       int(f.buffer),
		Compress:     f.compress,
		SpoolDir:     spoolDir(f.spoolDir),
		SpoolSize:    int64(f.spoolSize),
		SpoolDelay:   f.spoolDelay,
		Insecure:     f.insecure,
		Pin:          f.pin,
		CAFile:       f.caFile,
		CertFile:     f.certFile,
		KeyFile:      f.keyFile,
		Token:        f.token,
		User:         f.user,
		Password:     f.password,
		Endpoint:     f.endpoint,
		DisableRetry: f.disableRetry,
		DrainTimeout: f.drainTimeout,
		Hostname:     hostname,
		Logger:       log,
	}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	defer context.AfterFunc(ctx, func() {
		log.Info("stopping: sending what was captured and waiting for the collector's ack (interrupt again to quit at once)")
	})()
	return a.Run(ctx)
}

// warnIfShared warns when a file holding a secret is readable by group or
// others (on systems with Unix permissions).
func warnIfShared(log *slog.Logger, flag, path string) {
	fi, err := os.Stat(path)
	if err != nil || runtime.GOOS == "windows" || fi.Mode().Perm()&0o077 == 0 {
		return
	}
	log.Warn("the file holding a secret is readable by group or others; make it private with: chmod 600 "+path,
		"flag", flag, "file", path, "mode", fmt.Sprintf("%04o", uint32(fi.Mode().Perm())))
}

// defaultSpoolDir is /var/lib/tapstream-agent/spool for root (outside
// the collector's data directory, /var/lib/tapstream, so that an agent and
// a collector on one host never share a directory), else under the user's
// state directory.
func defaultSpoolDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/tapstream-agent/spool"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "tapstream", "spool")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "tapstream", "spool")
	}
	return "none"
}

func spoolDir(flag string) string {
	if flag == "none" || flag == "" {
		return ""
	}
	return flag
}

// parseGPS reads LAT,LON[,ALT].
func parseGPS(s string) (*pb.Gps, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) < 2 || len(parts) > 3 {
		return nil, fmt.Errorf("%q: want LAT,LON or LAT,LON,ALT", s)
	}
	var v [3]float64
	for i, p := range parts {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return nil, fmt.Errorf("%q: %q is not a number", s, p)
		}
		v[i] = f
	}
	if v[0] < -90 || v[0] > 90 || v[1] < -180 || v[1] > 180 {
		return nil, fmt.Errorf("%q: latitude must be within ±90 and longitude within ±180", s)
	}
	return &pb.Gps{Lat: v[0], Lon: v[1], Alt: v[2], HasAlt: len(parts) == 3}, nil
}
