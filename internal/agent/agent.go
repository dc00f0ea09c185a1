// Package agent captures packets from local sources and streams them to a
// collector.
//
// Each source runs two goroutines that meet at a bounded queue of batches:
// the capture loop packs packets straight from the capture backend into a
// batch buffer and pushes closed batches (it never blocks on the network),
// and the delivery loop streams them to the collector, keeps each batch until
// it is acked, and reconnects with backoff, sending again whatever was not
// acked.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"

	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/source"
	"github.com/tapstream/tapstream/internal/wire"
	"github.com/tapstream/tapstream/internal/wirecodec"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// Defaults for Config.
const (
	DefaultBatchSize    = 1 << 20
	DefaultBatchDelay   = 50 * time.Millisecond
	DefaultBuffer       = 64 << 20
	DefaultDrainTimeout = 30 * time.Second
	// DefaultStatusInterval is how often each source logs its counters.
	DefaultStatusInterval = time.Minute
	DefaultMaxBackoff     = 30 * time.Second
	DefaultSpoolSize      = 1 << 30
	DefaultSpoolDelay     = 500 * time.Millisecond
)

// Config configures an agent.
type Config struct {
	// Connect is the collector's HOST:PORT.
	Connect string
	// Sources to capture from; one stream each.
	Sources []source.Spec
	// Capture configures live sources. Its Filter is the user's filter; the
	// agent adds the exclusion of its own connection.
	Capture capture.Config
	// ReplaySpeed applies to file sources (0: as fast as possible).
	ReplaySpeed float64
	// Stop conditions, per source; zero means no limit.
	Count    int64
	Size     int64 // captured bytes
	Duration time.Duration

	BatchSize  int
	BatchDelay time.Duration
	Buffer     int // bytes of unacked batches held in memory per source
	// Compress is CompressNone, CompressZstd or CompressAuto.
	Compress string
	// SpoolDir holds each source's spool (in a subdirectory named by its
	// UUID); empty keeps batches in memory only.
	SpoolDir  string
	SpoolSize int64 // per source
	// SpoolDelay is how long a batch waits for its ack before it is
	// written to the spool (0: at once). An agent killed outright loses
	// the batches younger than this that were not yet acked.
	SpoolDelay time.Duration

	// Insecure means plaintext without authentication. Otherwise the
	// agent speaks TLS, trusts the collector by Pin or CAFile, and
	// presents Token, or User and Password (or a client certificate).
	Insecure bool
	Pin      string
	CAFile   string
	CertFile string // client certificate, for collectors with --client-ca
	KeyFile  string
	Token    string
	User     string
	Password string
	// Endpoint is a path prefix for a proxy in front of the collector
	// (nginx grpc_pass with a location prefix).
	Endpoint     string
	DisableRetry bool
	MaxBackoff   time.Duration
	// DrainTimeout bounds the wait for the last acks after capture stops.
	DrainTimeout time.Duration
	// StatusInterval is how often each source logs its counters; negative
	// turns the status lines off.
	StatusInterval time.Duration

	Hostname string
	// GPS, when set, is the capture's fixed location, stored with its
	// files (Kismet's --fixed-gps).
	GPS    *pb.Gps
	Logger *slog.Logger
}

// Validate checks c and fills in defaults.
func (c *Config) Validate() error {
	if c.Connect == "" {
		return errors.New("--connect HOST:PORT is required")
	}
	if _, _, err := net.SplitHostPort(c.Connect); err != nil {
		return fmt.Errorf("--connect %q: want HOST:PORT: %w", c.Connect, err)
	}
	if len(c.Sources) == 0 {
		return errors.New("at least one --source is required (an interface such as eth0, or file:PATH)")
	}
	seen := map[uuid.UUID]string{}
	for _, s := range c.Sources {
		if prev, ok := seen[s.UUID]; ok {
			return fmt.Errorf("sources %q and %q have the same UUID %s; give them different names", prev, s.Name, s.UUID)
		}
		seen[s.UUID] = s.Name
	}
	if !c.Insecure {
		if c.Pin == "" && c.CAFile == "" {
			return auth.ErrNoTrust
		}
		if c.Pin != "" {
			if _, err := auth.ParsePin(c.Pin); err != nil {
				return err
			}
		}
		if c.Token == "" && c.User == "" && c.CertFile == "" {
			return errors.New("no credentials for the collector: pass --token (make one on the collector with `tapstream token create --role agent`), --user and --password, or --cert and --key")
		}
		if c.User != "" && c.Password == "" {
			return errors.New("--user needs --password (or --password-file)")
		}
		if c.Token != "" {
			if _, _, err := auth.ParseToken(c.Token); err != nil {
				return fmt.Errorf("--token: not a tapstream token (they look like tst_<12 hex>_<48 hex>)")
			}
		}
	}
	if c.Endpoint != "" {
		c.Endpoint = "/" + strings.Trim(c.Endpoint, "/")
		if c.Endpoint == "/" {
			c.Endpoint = ""
		}
	}
	if c.Count < 0 || c.Size < 0 || c.Duration < 0 {
		return errors.New("stop conditions must not be negative")
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.BatchDelay == 0 {
		c.BatchDelay = DefaultBatchDelay
	}
	if c.Compress == "" {
		c.Compress = CompressAuto
	}
	switch c.Compress {
	case CompressNone, CompressZstd, CompressAuto:
	default:
		return fmt.Errorf("--compress %q: want none, zstd or auto", c.Compress)
	}
	if c.Buffer == 0 {
		c.Buffer = DefaultBuffer
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = DefaultStatusInterval
	}
	if c.SpoolSize == 0 {
		c.SpoolSize = DefaultSpoolSize
	}
	if c.SpoolDelay < 0 {
		return errors.New("spool delay must not be negative")
	}
	if c.SpoolDir != "" && c.SpoolSize < int64(c.BatchSize)*4 {
		return fmt.Errorf("spool size %d too small: it must hold at least four batches (%d bytes)", c.SpoolSize, c.BatchSize*4)
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if err := c.Capture.Validate(); err != nil {
		return err
	}
	if min := c.Capture.Snaplen + wire.RecordHeaderLen; c.BatchSize < min {
		return fmt.Errorf("batch size %d too small for snaplen %d (needs %d)", c.BatchSize, c.Capture.Snaplen, min)
	}
	if c.BatchSize > maxBatchSize {
		return fmt.Errorf("batch size %d above the limit of %d", c.BatchSize, maxBatchSize)
	}
	if c.Buffer < c.BatchSize {
		return fmt.Errorf("buffer %d smaller than one batch (%d)", c.Buffer, c.BatchSize)
	}
	return nil
}

// maxBatchSize keeps a batch message under the collector's default limit.
const maxBatchSize = 8 << 20

// Agent runs the configured sources.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	sources  []*sourceRun
	conn     *grpc.ClientConn
	trustErr atomic.Pointer[error] // set when the collector's certificate fails verification
}

// New validates cfg and opens every source, so that a bad interface name or
// filter fails before anything is sent.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger}
	exclude, err := selfExclusion(cfg.Connect)
	if err != nil {
		return nil, err
	}
	for _, spec := range cfg.Sources {
		srcs, err := a.open(spec, exclude)
		if err != nil {
			a.closeSources()
			return nil, err
		}
		r, err := newSourceRun(a, spec, srcs)
		if err != nil {
			for _, src := range srcs {
				src.Close()
			}
			a.closeSources()
			return nil, err
		}
		a.sources = append(a.sources, r)
	}
	return a, nil
}

func (a *Agent) open(spec source.Spec, exclude string) ([]capture.Source, error) {
	if spec.Kind == source.File {
		src, err := capture.OpenFile(spec.Target, capture.FileConfig{Speed: a.cfg.ReplaySpeed, Filter: a.cfg.Capture.Filter})
		if err != nil {
			return nil, err
		}
		return []capture.Source{src}, nil
	}
	c := a.cfg.Capture
	c.Filter = combineFilters(c.Filter, exclude)
	srcs, err := capture.OpenLiveFanout(spec.Target, c)
	if err != nil {
		return nil, err
	}
	if c.Snaplen < capture.DefaultSnaplen {
		a.log.Warn("snaplen may cut packets short; tools such as Arkime then refuse the files unless told to read truncated packets",
			"source", spec.Name, "snaplen", c.Snaplen)
	}
	return srcs, nil
}

func (a *Agent) closeSources() {
	for _, r := range a.sources {
		r.close()
	}
}

// Run captures and streams until every source has stopped and its batches
// are acked. Cancelling ctx stops capture; delivery of what was captured
// goes on for at most DrainTimeout.
func (a *Agent) Run(ctx context.Context) error {
	defer a.closeSources()
	a.limitMemory()
	conn, err := a.dial()
	if err != nil {
		return err
	}
	a.conn = conn
	defer conn.Close()

	for _, r := range a.sources {
		a.log.Info("capturing", "source", r.spec.Name, "uuid", r.spec.UUID, "interface", r.info.Interface,
			"backend", r.info.Backend, "link_type", r.info.LinkType, "snaplen", r.info.Snaplen, "collector", a.cfg.Connect)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(a.sources))
	for i, r := range a.sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.run(ctx)
		}()
	}
	wg.Wait()
	for _, r := range a.sources {
		r.logSummary()
	}
	return errors.Join(errs...)
}

func (a *Agent) dial() (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if !a.cfg.Insecure {
		host, _, _ := net.SplitHostPort(a.cfg.Connect)
		tc, err := auth.ClientTLS(auth.ClientOptions{ServerName: host, Pin: a.cfg.Pin, CAFile: a.cfg.CAFile,
			CertFile: a.cfg.CertFile, KeyFile: a.cfg.KeyFile})
		if err != nil {
			return nil, err
		}
		verify := tc.VerifyConnection
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			err := verify(cs)
			if err != nil {
				a.trustErr.Store(&err)
			}
			return err
		}
		creds = credentials.NewTLS(tc)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                15 * time.Second,
			Timeout:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  500 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   5 * time.Second,
			},
			MinConnectTimeout: 10 * time.Second,
		}),
		// The codec sends a batch's records without copying them: they
		// stay untouched until the batch is acked.
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(maxBatchSize+64<<10), grpc.ForceCodecV2(wirecodec.Codec{})),
		grpc.WithInitialWindowSize(8 << 20),
		grpc.WithInitialConnWindowSize(32 << 20),
		grpc.WithWriteBufferSize(256 << 10),
		grpc.WithReadBufferSize(64 << 10),
	}
	conn, err := grpc.NewClient(a.cfg.Connect, opts...)
	if err != nil {
		return nil, fmt.Errorf("collector address %s: %w", a.cfg.Connect, err)
	}
	return conn, nil
}

// openStream opens one source's stream, under the endpoint prefix if any.
func (a *Agent) openStream(ctx context.Context) (pb.Capture_StreamClient, error) {
	// The credentials go in the request headers as well as in Hello: the
	// collector checks them before it reads the first message.
	if !a.cfg.Insecure {
		switch {
		case a.cfg.Token != "":
			ctx = metadata.AppendToOutgoingContext(ctx, auth.MetadataToken, a.cfg.Token)
		case a.cfg.User != "":
			ctx = metadata.AppendToOutgoingContext(ctx, auth.MetadataUser, a.cfg.User, auth.MetadataPassword, a.cfg.Password)
		}
	}
	if a.cfg.Endpoint == "" {
		return pb.NewCaptureClient(a.conn).Stream(ctx)
	}
	desc := &pb.Capture_ServiceDesc.Streams[0]
	cs, err := a.conn.NewStream(ctx, desc, a.cfg.Endpoint+"/"+pb.Capture_ServiceDesc.ServiceName+"/"+desc.StreamName)
	if err != nil {
		return nil, err
	}
	return &grpc.GenericClientStream[pb.AgentMessage, pb.CollectorMessage]{ClientStream: cs}, nil
}

// trustFailure returns the TLS verification failure seen last, if any.
func (a *Agent) trustFailure() error {
	if p := a.trustErr.Load(); p != nil {
		return *p
	}
	return nil
}

// selfExclusion returns a filter expression matching the agent's own
// connection to the collector, so that capture never includes it.
func selfExclusion(connect string) (string, error) {
	host, portStr, err := net.SplitHostPort(connect)
	if err != nil {
		return "", fmt.Errorf("--connect %q: %w", connect, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return "", fmt.Errorf("--connect %q: bad port: %w", connect, err)
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = append(addrs, a.WithZone(""))
	} else {
		ips, err := net.LookupIP(host)
		if err != nil {
			return "", fmt.Errorf("resolve collector %s: %w", host, err)
		}
		for _, ip := range ips {
			if a, ok := netip.AddrFromSlice(ip); ok {
				addrs = append(addrs, a.Unmap())
			}
		}
	}
	if len(addrs) == 0 {
		return "", fmt.Errorf("resolve collector %s: no addresses", host)
	}
	hosts := make([]string, len(addrs))
	for i, a := range addrs {
		hosts[i] = "host " + a.String()
	}
	return fmt.Sprintf("tcp and (%s) and port %d", strings.Join(hosts, " or "), port), nil
}

// combineFilters returns a filter that matches user but not exclude.
func combineFilters(user, exclude string) string {
	if strings.TrimSpace(user) == "" {
		return "not (" + exclude + ")"
	}
	return "(" + user + ") and not (" + exclude + ")"
}

// memoryHeadroom is what the agent may use beyond its batch buffers. The
// limit counts all the runtime's memory, not just the heap: with 16 MiB,
// once a source's buffer filled the heap goal sat at the live heap and the
// collector ran about 150 times per 300,000 packets of 1500 B (half the
// agent's user CPU), for no smaller RSS; with 32 MiB it runs 4 times.
const memoryHeadroom = 32 << 20

// limitMemory sets a soft limit on the Go heap: the configured buffers of
// every source plus headroom, so that the garbage collector works harder
// before the heap outgrows what the operator asked for. The capture rings
// are outside the Go heap. GOMEMLIMIT in the environment wins.
func (a *Agent) limitMemory() {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := int64(len(a.sources))*int64(a.cfg.Buffer) + memoryHeadroom
	debug.SetMemoryLimit(limit)
}
