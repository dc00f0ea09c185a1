// Package collector receives agents' streams and stores their packets.
//
// Each stream is one source. Its handler reads batches in order, checks the
// sequence number (dropping duplicates it already stored), validates the
// records, writes them to the source's pcap file in one write, and only then
// acks. A malformed or out-of-order message ends that stream alone.
package collector

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"

	"github.com/tapstream/tapstream/internal/admission"
	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/pcapfile"
	"github.com/tapstream/tapstream/internal/ratelog"
	"github.com/tapstream/tapstream/internal/source"
	"github.com/tapstream/tapstream/internal/store"
	"github.com/tapstream/tapstream/internal/wire"
	"github.com/tapstream/tapstream/internal/wirecodec"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// Defaults for Config.
const (
	DefaultPort            = 7447
	DefaultMaxMessageBytes = 16 << 20
	// DefaultHelloTimeout is how long a new connection has to finish its
	// TLS handshake and authenticate a stream, and a stream to send Hello.
	DefaultHelloTimeout    = admission.DefaultHelloTimeout
	DefaultShutdownTimeout = 10 * time.Second
	// DefaultMaxStreamsPerConn bounds the sources one connection carries.
	DefaultMaxStreamsPerConn = 64
	// DefaultMaxSourcesPerOwner bounds the sources one credential may
	// create.
	DefaultMaxSourcesPerOwner = 256
	// DefaultStreamIdleTimeout ends a stream that sends nothing, not even
	// a keepalive, for this long. Agents send a keepalive after a third
	// of it without batches.
	DefaultStreamIdleTimeout = 60 * time.Second
	// DefaultRecheckInterval is how often live streams' credentials and
	// source ownership are checked again.
	DefaultRecheckInterval = 2 * time.Second
	DefaultRotateSize      = 256 << 20
	DefaultRotateTime      = 15 * time.Minute
	// connIdleTimeout closes a connection that has had no stream this long.
	connIdleTimeout = 30 * time.Second
	// DefaultSendTimeout is how long an agent may leave a message unread.
	DefaultSendTimeout = 30 * time.Second
	// DefaultMaxClockAhead is how far in the future packets may be stamped.
	DefaultMaxClockAhead = 24 * time.Hour
	// clockWarnSkew is the agent clock offset, seen at Hello, that is
	// worth a warning.
	clockWarnSkew = 5 * time.Minute
	// maxHeaderListSize bounds a stream's request headers, which are read
	// before anything is known of the client.
	maxHeaderListSize = 64 << 10
	// Admission limits; see package admission.
	DefaultMaxConns        = admission.DefaultMaxConns
	DefaultMaxConnsPerIP   = admission.DefaultMaxConnsPerAddr
	DefaultMaxPreAuthConns = admission.DefaultMaxPreAuthConns
	DefaultMaxAuthFailures = admission.DefaultMaxAuthFailures
	// Lines logged before a stream authenticates: at most logBurst of one
	// message per logInterval, then a count of those held back.
	logInterval = 10 * time.Second
	logBurst    = 5
	// maxRecordsPerBatch bounds the records one batch may hold.
	maxRecordsPerBatch = 1 << 20
)

// HTTP/2 flow-control windows for agent streams. A stream's window is what
// the collector buffers for a source it has not caught up with, so it is
// the largest part of its memory per source: 4 MiB keeps four 1 MiB
// batches in flight (about 300 Mbit/s per source at 100 ms round trip).
const (
	streamWindow = 4 << 20
	connWindow   = 32 << 20
)

// Config configures a collector.
type Config struct {
	DataDir         string
	MaxMessageBytes int
	// Fsync makes the collector sync each batch to disk before acking it.
	Fsync           bool
	HelloTimeout    time.Duration
	ShutdownTimeout time.Duration
	Logger          *slog.Logger

	// TLS, when set, is served on the port and agents must authenticate;
	// nil means plaintext without authentication (--insecure).
	TLS *tls.Config
	// URIPrefix is a path prefix that a proxy in front passes along, as in
	// Kismet's httpd_uri_prefix: streams arrive at
	// <prefix>/tapstream.v1.Capture/Stream.
	URIPrefix string
	// Connection limits: authenticated connections in all, and
	// connections from one address (streams from one forwarded address
	// behind a trusted proxy).
	MaxConns, MaxConnsPerIP int
	// MaxPreAuthConns bounds connections that have not authenticated a
	// stream yet; past it the oldest of them is closed.
	MaxPreAuthConns int
	// TrustedProxies may forward the client's address (X-Real-IP,
	// X-Forwarded-For); their own connections are not capped per address.
	TrustedProxies []netip.Prefix
	// MaxStreamsPerConn bounds the sources one connection may stream.
	MaxStreamsPerConn uint32
	// MaxAuthFailures one credential may have from one address in a
	// minute before it is refused there for a minute.
	MaxAuthFailures int
	// MaxSourcesPerOwner bounds the sources one credential may create;
	// negative means no limit. Not applied without TLS (--insecure).
	MaxSourcesPerOwner int
	// StreamIdleTimeout ends a stream that sends no batch and no
	// keepalive for this long.
	StreamIdleTimeout time.Duration
	// RecheckInterval is how often the credentials of live streams and
	// the ownership of their sources are checked again, so that a
	// revoked token or a reassigned source ends its streams.
	RecheckInterval time.Duration
	// PasswordChecks bounds bcrypt checks running at once.
	PasswordChecks int

	// Format of new files.
	Format pcapfile.Format
	// Rotation: a source's file is closed and a new one begun before a
	// batch that would take it past RotateSize bytes or RotatePackets
	// packets, and once it is RotateTime old. Zero turns a limit off.
	RotateSize    int64
	RotateTime    time.Duration
	RotatePackets uint64
	// Retention: closed files are deleted, oldest first, when older than
	// MaxAge, while all files take more than MaxStorage, and while the
	// disk has less than MinFree free. Zero turns a limit off.
	MaxStorage int64
	MaxAge     time.Duration
	MinFree    MinFree

	// SendTimeout is how long a message to an agent may wait for the agent
	// to read it; then its connection is closed (DefaultSendTimeout when
	// zero).
	SendTimeout time.Duration

	// DecompressMemory bounds the memory of all batches being
	// decompressed at once (DefaultDecompressMemory when zero).
	DecompressMemory int64

	// MaxClockAhead is how far past the collector's clock a packet's
	// timestamp may be; a batch stamped later is refused. Zero means
	// DefaultMaxClockAhead, negative no limit.
	MaxClockAhead time.Duration

	// StatusInterval is how often the collector logs each live source's
	// counters; zero or negative turns that off.
	StatusInterval time.Duration
}

// Validate checks c and fills in defaults.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("data directory not set")
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.MaxMessageBytes < 1<<20 {
		return fmt.Errorf("max message size %d below 1 MiB", c.MaxMessageBytes)
	}
	if c.HelloTimeout == 0 {
		c.HelloTimeout = DefaultHelloTimeout
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxConnsPerIP == 0 {
		c.MaxConnsPerIP = DefaultMaxConnsPerIP
	}
	if c.MaxPreAuthConns == 0 {
		c.MaxPreAuthConns = DefaultMaxPreAuthConns
	}
	if c.MaxAuthFailures == 0 {
		c.MaxAuthFailures = DefaultMaxAuthFailures
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = DefaultSendTimeout
	}
	if c.DecompressMemory == 0 {
		c.DecompressMemory = DefaultDecompressMemory
	}
	if c.MaxClockAhead == 0 {
		c.MaxClockAhead = DefaultMaxClockAhead
	}
	if c.MaxSourcesPerOwner == 0 {
		c.MaxSourcesPerOwner = DefaultMaxSourcesPerOwner
	}
	if c.StreamIdleTimeout == 0 {
		c.StreamIdleTimeout = DefaultStreamIdleTimeout
	}
	if c.StreamIdleTimeout < 3*time.Second {
		return fmt.Errorf("stream idle timeout %v below 3s", c.StreamIdleTimeout)
	}
	if c.RecheckInterval == 0 {
		c.RecheckInterval = DefaultRecheckInterval
	}
	if c.MaxConns < 0 || c.MaxConnsPerIP < 0 || c.MaxPreAuthConns < 0 || c.MaxAuthFailures < 0 || c.PasswordChecks < 0 {
		return errors.New("connection and authentication limits must not be negative (0 takes the default)")
	}
	if c.MaxStreamsPerConn == 0 {
		c.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	if c.URIPrefix != "" {
		c.URIPrefix = "/" + strings.Trim(c.URIPrefix, "/")
		if c.URIPrefix == "/" {
			c.URIPrefix = ""
		}
	}
	return nil
}

// Server is the collector's gRPC service.
type Server struct {
	pb.UnimplementedCaptureServer
	cfg     Config
	log     *slog.Logger
	pcapDir string

	pcapRoot *os.Root // DATA/pcap: files are made and deleted only beneath it

	store  *store.Store
	decomp *decompressor
	adm    *admission.Controller
	// preLog is the logger for what happens before a stream
	// authenticates: repeated lines are suppressed, so a flood of
	// connections or streams cannot fill the disk with logs.
	preLog    *slog.Logger
	preLogger *ratelog.Handler

	mu       sync.Mutex
	live     map[uuid.UUID]*session // streaming now
	streamed map[uuid.UUID]struct{} // sources that streamed since start
	stopping bool

	shutdown chan struct{} // closed when shutdown begins
	sessions sync.WaitGroup

	space             gate           // paused while storage is full
	storagePoke       chan struct{}  // asks the storage manager to look now
	lateCloses        sync.WaitGroup // files closed a moment after their session
	retentionMu       sync.Mutex
	overStorageLogged bool
	written           atomic.Int64 // bytes stored, for retention's estimate
	usedBase          int64        // bytes in files at the last catalog sum
	usedAt            time.Time
	writtenAtScan     int64
}

// New creates the data directory, opens the state database, repairs the
// files an earlier run left open, and returns a Server.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pcapDir := filepath.Join(cfg.DataDir, "pcap")
	if err := os.MkdirAll(pcapDir, 0o750); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	if err := checkWritable(pcapDir); err != nil {
		return nil, err
	}
	pcapRoot, err := os.OpenRoot(pcapDir)
	if err != nil {
		return nil, fmt.Errorf("open data directory: %w", err)
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, "tapstream.db"), store.Options{Sync: cfg.Fsync})
	if err != nil {
		pcapRoot.Close()
		return nil, err
	}
	decomp, err := newDecompressor(cfg.DecompressMemory)
	if err != nil {
		st.Close()
		pcapRoot.Close()
		return nil, err
	}
	for _, r := range st.Repairs() {
		cfg.Logger.Warn("state database: repaired a value out of range (counters of this row may be wrong)", "row", r)
	}
	preLogger := ratelog.New(cfg.Logger.Handler(), logInterval, logBurst)
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		preLog:    slog.New(preLogger),
		preLogger: preLogger,
		adm: admission.New(admission.Config{
			MaxConns:        cfg.MaxConns,
			MaxConnsPerAddr: cfg.MaxConnsPerIP,
			MaxPreAuthConns: cfg.MaxPreAuthConns,
			HelloTimeout:    cfg.HelloTimeout,
			TrustedProxies:  cfg.TrustedProxies,
			MaxAuthFailures: cfg.MaxAuthFailures,
			PasswordChecks:  cfg.PasswordChecks,
			Logger:          slog.New(preLogger),
		}),
		pcapDir:  pcapDir,
		pcapRoot: pcapRoot,
		store:    st,
		decomp:   decomp,
		live:     map[uuid.UUID]*session{},
		streamed: map[uuid.UUID]struct{}{},
		shutdown: make(chan struct{}),

		storagePoke: make(chan struct{}, 1),
	}
	if err := s.recoverFiles(context.Background()); err != nil {
		decomp.close()
		st.Close()
		pcapRoot.Close()
		return nil, err
	}
	if err := s.reconcile(context.Background()); err != nil {
		decomp.close()
		st.Close()
		pcapRoot.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the state database. Call it after Serve has returned.
func (s *Server) Close() error {
	s.lateCloses.Wait()
	s.decomp.close()
	s.pcapRoot.Close()
	return s.store.Close()
}

func checkWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".write-test-*")
	if err != nil {
		return fmt.Errorf("data directory %s is not writable: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// GRPCServer returns a grpc.Server with this service registered and the
// collector's limits and keepalive policy applied.
func (s *Server) GRPCServer(extra ...grpc.ServerOption) *grpc.Server {
	opts := append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.cfg.MaxMessageBytes),
		// Batches are large: wide flow-control windows and buffers keep a
		// stream moving without waiting for window updates.
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.ReadBufferSize(256 << 10),
		grpc.WriteBufferSize(64 << 10),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    15 * time.Second,
			Timeout: 10 * time.Second,
			// A connection with no stream is closed: one whose Hellos were
			// refused, or whose credential was revoked, gives back its
			// place in the connection budget (agents redial at once).
			MaxConnectionIdle: connIdleTimeout,
		}),
		// TLS and HTTP/2 setup must fit in the time a connection has to
		// authenticate.
		grpc.ConnectionTimeout(s.cfg.HelloTimeout),
		grpc.MaxHeaderListSize(maxHeaderListSize),
		grpc.InTapHandle(s.tap),
		// Batch records arrive in a pooled buffer; sessions give it back.
		grpc.ForceServerCodecV2(wirecodec.Codec{}),
		grpc.MaxConcurrentStreams(s.cfg.MaxStreamsPerConn),
	}, extra...)
	if s.cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.cfg.TLS)))
	}
	if s.cfg.URIPrefix != "" {
		opts = append(opts, grpc.UnknownServiceHandler(s.prefixed))
	}
	g := grpc.NewServer(opts...)
	pb.RegisterCaptureServer(g, s)
	return g
}

// streamMethod is the full method name of Capture.Stream.
var streamMethod = "/" + pb.Capture_ServiceDesc.ServiceName + "/" + pb.Capture_ServiceDesc.Streams[0].StreamName

// prefixed serves Capture.Stream under the configured URI prefix, for
// agents behind a proxy that keeps the prefix in the path.
func (s *Server) prefixed(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	if method != s.cfg.URIPrefix+streamMethod {
		return status.Errorf(codes.Unimplemented, "unknown method %q (this collector serves %s%s)", method, s.cfg.URIPrefix, streamMethod)
	}
	return s.Stream(&grpc.GenericServerStream[pb.AgentMessage, pb.CollectorMessage]{ServerStream: stream})
}

// Serve serves on lis until ctx ends, then shuts down gracefully: it stops
// accepting streams, lets every stream store and ack what it has received,
// closes the files, and returns.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	lis = s.adm.Listen(lis)
	storageCtx, stopStorage := context.WithCancel(context.Background())
	storageDone := make(chan struct{})
	go func() {
		defer close(storageDone)
		if s.cfg.StatusInterval > 0 {
			go s.statusLoop(storageCtx, s.cfg.StatusInterval)
		}
		if s.cfg.TLS != nil && s.cfg.RecheckInterval > 0 {
			go s.recheckLoop(storageCtx, s.cfg.RecheckInterval)
		}
		go s.flushLogs(storageCtx)
		s.manageStorage(storageCtx)
	}()
	defer func() {
		s.lateCloses.Wait()
		stopStorage()
		<-storageDone
	}()
	g := s.GRPCServer()
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	select {
	case err := <-errc:
		s.beginShutdown()
		s.sessions.Wait()
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down: finishing the batches in hand")
	s.beginShutdown()
	done := make(chan struct{})
	go func() {
		s.sessions.Wait()
		g.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(s.cfg.ShutdownTimeout):
		s.log.Warn("shutdown timeout: closing remaining connections")
		g.Stop()
		<-done
	}
	return nil
}

func (s *Server) beginShutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopping {
		s.stopping = true
		close(s.shutdown)
	}
}

// statusLoop logs every live source's counters and rates each interval.
func (s *Server) statusLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	type seen struct {
		packets, bytes uint64
		at             time.Time
	}
	last := map[*session]seen{}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			live := make([]*session, 0, len(s.live))
			for _, sess := range s.live {
				live = append(live, sess)
			}
			s.mu.Unlock()
			next := make(map[*session]seen, len(live))
			for _, sess := range live {
				p, b := sess.packets.Load(), sess.bytes.Load()
				prev, ok := last[sess]
				if !ok {
					prev = seen{at: now.Add(-interval)}
				}
				secs := now.Sub(prev.at).Seconds()
				paused, reason, _ := s.space.state()
				attrs := []any{"source", sess.name, "remote", sess.remote, "packets", p, "bytes", b,
					"pps", int64(float64(p-prev.packets) / secs), "bytes_per_s", int64(float64(b-prev.bytes) / secs)}
				if paused {
					s.log.Warn("source status: paused, storage full", append(attrs, "reason", reason)...)
				} else {
					s.log.Info("source status", attrs...)
				}
				next[sess] = seen{p, b, now}
			}
			last = next
		}
	}
}

// Sources returns every source's stored state and totals, ordered by name.
func (s *Server) Sources(ctx context.Context) ([]store.Source, error) {
	return s.store.Sources(ctx)
}

// Stream implements pb.CaptureServer: one source's stream.
func (s *Server) Stream(stream pb.Capture_StreamServer) error {
	ctx := stream.Context()
	st, err := s.adm.Stream(ctx)
	if err != nil {
		s.preLog.Warn("refused a stream before Hello", "err", err)
		return refuse(stream, &pb.Refusal{Reason: pb.Refusal_REASON_RESOURCE_LIMIT, Message: err.Error() + "; try again shortly"})
	}
	defer st.Done()
	remote := st.Peer
	if st.Proxy {
		remote = st.Addr + " via " + st.Peer
	}
	log := s.preLog.With("peer", remote)

	hello, who, ref, err := s.admitStream(stream, st)
	if err != nil {
		st.EndedBeforeHello()
		log.Warn("stream ended before Hello", "err", err)
		return err
	}
	var sess *session
	if ref == nil {
		sess, ref = s.admit(hello, remote, who)
	}
	if ref != nil {
		log.Warn("refused source", "source", hello.GetSourceName(), "uuid", hello.GetSourceUuid(), "reason", ref.Reason, "err", ref.Message)
		return refuse(stream, ref)
	}
	defer s.release(sess)
	sess.conn = st
	log = s.log.With("peer", remote, "source", sess.name, "uuid", sess.uuid, "session", sess.id)
	sess.log = log
	sess.planGap(sess.stored)
	log.Info("agent connected", "as", who.display,
		"hostname", hello.Hostname, "os", hello.Os, "arch", hello.Arch,
		"interface", hello.Interface, "link_type", hello.LinkType, "snaplen", hello.Snaplen,
		"filter", hello.Filter, "agent_version", hello.AgentVersion, "resume_after", sess.lastSeq,
		"credentials_in_headers", hasHeaderCredentials(ctx))
	if at := hello.AgentTimeUnixNano; at != 0 {
		if skew := time.Duration(at - time.Now().UnixNano()); skew > clockWarnSkew || skew < -clockWarnSkew {
			log.Warn("the agent's clock differs from the collector's; packet times come from the agent's clock",
				"agent_ahead_by", skew.Round(time.Second))
		}
	}

	err = stream.Send(&pb.CollectorMessage{Msg: &pb.CollectorMessage_Welcome{Welcome: &pb.Welcome{
		SessionId:             sess.id,
		ResumeAfterSeq:        sess.lastSeq,
		MaxMessageBytes:       uint32(s.cfg.MaxMessageBytes),
		CollectorTimeUnixNano: time.Now().UnixNano(),
		KeepaliveIntervalMs:   uint32(s.keepaliveInterval().Milliseconds()),
	}}})
	if err != nil {
		return err
	}
	err = sess.run(stream)
	if cerr := sess.close(); cerr != nil {
		log.Error("closing capture file failed", "err", cerr)
		err = errors.Join(err, cerr)
	}
	code := status.Code(err)
	switch {
	case err == nil:
		sess.endedUnclean(err)
		log.Info("agent finished", sess.summaryAttrs()...)
	case sess.endedUnclean(err):
		log.Warn("stream ended without the agent's clean end; if the agent was killed or crashed, what it captured and had not spooled is lost, and a gap is recorded when it starts again",
			append(sess.summaryAttrs(), "reason", err)...)
	case code == codes.Unavailable || code == codes.Canceled:
		log.Info("stream ended", append(sess.summaryAttrs(), "reason", err)...)
	default:
		log.Warn("stream ended with an error", append(sess.summaryAttrs(), "err", err)...)
	}
	return err
}

// admitStream authenticates a stream and reads its Hello. An agent that
// sends its credentials in the request headers is authenticated before
// its Hello is read, so the collector buffers a first message of the
// declared size (up to --max-message-size) only for authenticated
// clients; a Hello without that goes through one of a few places. The
// credentials in the Hello are checked as before, unless they are the
// ones already checked. A refusal comes back as ref, with the Hello if
// one was read; err means the stream ended without a Hello.
func (s *Server) admitStream(stream pb.Capture_StreamServer, st *admission.Stream) (hello *pb.Hello, who principal, ref *pb.Refusal, err error) {
	ctx := stream.Context()
	var early *pb.Credentials
	if s.cfg.TLS != nil {
		early, ref = metadataCredentials(ctx)
		switch {
		case ref != nil:
		case early != nil || hasClientCert(ctx):
			who, ref = s.authenticate(ctx, &pb.Hello{Credentials: early}, st)
			if ref == nil {
				ref = s.connAuthenticated(st)
			}
		default:
			done, err := st.LegacyHello()
			if err != nil {
				ref = &pb.Refusal{Reason: pb.Refusal_REASON_RESOURCE_LIMIT, Message: "too many streams without credentials in their headers " +
					"are sending Hello; try again shortly, or upgrade the agent (it then sends its credentials in the headers)"}
				break
			}
			defer done()
		}
		if ref != nil {
			return &pb.Hello{}, who, ref, nil
		}
	}
	hello, err = s.recvHello(stream, s.cfg.HelloTimeout)
	if err != nil {
		return nil, who, nil, err
	}
	if ref = checkHello(hello); ref != nil {
		return hello, who, ref, nil
	}
	if early == nil && !hasClientCert(ctx) || !proto.Equal(early, hello.GetCredentials()) {
		if who, ref = s.authenticate(ctx, hello, st); ref != nil {
			return hello, who, ref, nil
		}
	}
	return hello, who, s.connAuthenticated(st), nil
}

// connAuthenticated moves the stream's connection to the authenticated
// budget, or refuses the stream when that is full.
func (s *Server) connAuthenticated(st *admission.Stream) *pb.Refusal {
	if err := st.Authenticated(); err != nil {
		return &pb.Refusal{Reason: pb.Refusal_REASON_RESOURCE_LIMIT, Message: err.Error() + "; try again later"}
	}
	return nil
}

// tap runs when a stream's headers arrive, before the stream exists: a
// stream that admission would refuse at once is reset there, so its
// client's first message is never buffered. It must not block.
func (s *Server) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if s.cfg.TLS == nil {
		return ctx, nil
	}
	creds := len(info.Header.Get(auth.MetadataToken)) > 0 || len(info.Header.Get(auth.MetadataUser)) > 0 || hasClientCert(ctx)
	if s.adm.Busy(creds) {
		return nil, status.Error(codes.ResourceExhausted, "collector busy with unauthenticated streams; try again shortly")
	}
	return ctx, nil
}

// refuse sends ref and returns the stream's status.
func refuse(stream pb.Capture_StreamServer, ref *pb.Refusal) error {
	stream.Send(&pb.CollectorMessage{Msg: &pb.CollectorMessage_Refusal{Refusal: ref}})
	return status.Error(refusalCode(ref.Reason), ref.Message)
}

// flushLogs writes the counts of suppressed log lines until ctx ends.
func (s *Server) flushLogs(ctx context.Context) {
	t := time.NewTicker(logInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.preLogger.Flush(context.Background())
			return
		case <-t.C:
			s.preLogger.Flush(ctx)
		}
	}
}

// recvHello waits at most timeout for the stream's first message.
func (s *Server) recvHello(stream pb.Capture_StreamServer, timeout time.Duration) (*pb.Hello, error) {
	type result struct {
		m   *pb.AgentMessage
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := stream.Recv()
		ch <- result{m, err}
	}()
	var res result
	select {
	case res = <-ch:
	case <-time.After(timeout):
		return nil, status.Errorf(codes.DeadlineExceeded, "no Hello within %v", timeout)
	}
	if res.err != nil {
		return nil, res.err
	}
	h := res.m.GetHello()
	if h == nil {
		return nil, status.Error(codes.InvalidArgument, "the first message of a stream must be Hello")
	}
	return h, nil
}

// keepaliveInterval is how long an agent with nothing to send waits before
// it sends a keepalive: a third of the idle timeout.
func (s *Server) keepaliveInterval() time.Duration { return s.cfg.StreamIdleTimeout / 3 }

// admit validates hello, checks that who may stream the source, and
// registers a session, or returns a refusal. A live stream of the same
// source is taken over: the ownership check has passed, so it is the
// same credential's (an agent reconnecting, or restarted after a crash).
func (s *Server) admit(h *pb.Hello, remote string, who principal) (*session, *pb.Refusal) {
	refuse := func(r pb.Refusal_Reason, format string, args ...any) (*session, *pb.Refusal) {
		return nil, &pb.Refusal{Reason: r, Message: fmt.Sprintf(format, args...)}
	}
	if h.ProtocolVersion != uint32(pb.ProtocolVersion_PROTOCOL_VERSION_1) {
		return refuse(pb.Refusal_REASON_UNSUPPORTED_VERSION, "protocol version %d not supported; this collector speaks version 1", h.ProtocolVersion)
	}
	id, err := uuid.Parse(h.SourceUuid)
	if err != nil {
		return refuse(pb.Refusal_REASON_INVALID_HELLO, "bad source UUID: %v", err)
	}
	name, err := source.SanitizeName(h.SourceName)
	if err != nil {
		return refuse(pb.Refusal_REASON_INVALID_HELLO, "%v", err)
	}
	if _, err := uuid.Parse(name); err == nil {
		// Sources are picked by name or UUID (extract --source): a name
		// that reads as a UUID could pass for another source.
		return refuse(pb.Refusal_REASON_INVALID_HELLO, "source name %q reads as a UUID; name the source, and give its UUID as uuid=", name)
	}
	switch {
	case h.CaptureId == "" || len(h.CaptureId) > 64:
		return refuse(pb.Refusal_REASON_INVALID_HELLO, "capture id must be 1 to 64 bytes")
	case h.Snaplen == 0 || h.Snaplen > wire.MaxSnaplen:
		return refuse(pb.Refusal_REASON_INVALID_HELLO, "snaplen %d out of range (1 to %d)", h.Snaplen, wire.MaxSnaplen)
	case h.LinkType > 0xffff:
		return refuse(pb.Refusal_REASON_INVALID_HELLO, "link type %d out of range", h.LinkType)
	}

	dir := filepath.Join(s.pcapDir, name)
	if !filepath.IsLocal(name) || filepath.Dir(dir) != s.pcapDir {
		return refuse(pb.Refusal_REASON_INVALID_HELLO, "source name %q is not a plain name", name)
	}
	if ref := s.claim(id.String(), name, who); ref != nil {
		return nil, ref
	}
	// Create the directory now, well before a file in it closes: Arkime's
	// monitor misses files closed right after their directory appears.
	dirCreated, err := s.makeSourceDir(name)
	if errors.Is(err, errNotPlainDir) {
		s.log.Error("refused a source: its directory is not a plain directory; nothing is written outside DATA/pcap", "source", name, "err", err)
		return refuse(pb.Refusal_REASON_STORAGE_UNAVAILABLE, "collector cannot store this source: its directory on the collector is not a plain directory (see the collector's log)")
	}
	if err != nil {
		s.log.Error("cannot create source directory", "dir", dir, "err", err)
		return refuse(pb.Refusal_REASON_STORAGE_UNAVAILABLE, "collector cannot create the source's directory")
	}

	for {
		s.mu.Lock()
		if s.stopping {
			s.mu.Unlock()
			return refuse(pb.Refusal_REASON_SHUTTING_DOWN, "collector is shutting down")
		}
		old := s.live[id]
		if old == nil {
			break
		}
		s.mu.Unlock()
		if old.hello.GetHostname() != h.GetHostname() {
			// Another host with the same source (a copied config or
			// machine id): taking over would make the two interleave
			// their packets in one source, each kicking the other out.
			s.log.Warn("refused a second host streaming a live source", "source", name, "uuid", id, "as", who.display,
				"live_host", old.hello.GetHostname(), "live_peer", old.remote, "new_host", h.GetHostname(), "new_peer", remote)
			return refuse(pb.Refusal_REASON_DUPLICATE_SOURCE,
				"source %s (%s) is streaming now from another host; give each agent's source its own name or uuid (an agent that restarts on the same host takes over its old stream)", id, name)
		}
		// The owner connecting again while its old stream lingers (the
		// old connection may not have died yet, or the agent restarted
		// after a crash): end the old stream and take over. The other
		// side's address is logged here, never told to the caller.
		s.log.Warn("a new stream of a live source takes over", "source", name, "uuid", id, "as", who.display,
			"old_peer", old.remote, "old_capture", old.captureID, "new_peer", remote, "new_capture", h.CaptureId)
		// A new capture run means the old one is over: whatever it had
		// not delivered is gone, so its stream did not end cleanly.
		old.replacedByNewRun = old.captureID != h.CaptureId
		old.kick()
		select {
		case <-old.done:
		case <-time.After(s.cfg.ShutdownTimeout):
			return refuse(pb.Refusal_REASON_DUPLICATE_SOURCE, "previous stream of source %s (%s) is still closing; try again", id, name)
		}
	}
	sess := &session{
		srv:        s,
		id:         uuid.NewString(),
		uuid:       id,
		name:       name,
		captureID:  h.CaptureId,
		remote:     remote,
		who:        who,
		hello:      h,
		dir:        dir,
		dirCreated: dirCreated,
		kicked:     make(chan struct{}),
		done:       make(chan struct{}),
	}
	s.live[id] = sess
	s.sessions.Add(1)
	s.mu.Unlock()

	src, err := s.store.StartCapture(context.Background(), id.String(), name, h.Hostname, h.CaptureId)
	if err != nil {
		s.log.Error("state database", "err", err)
		s.release(sess)
		return refuse(pb.Refusal_REASON_STORAGE_UNAVAILABLE, "collector cannot record the source")
	}
	if err := s.store.SetSourceState(context.Background(), id.String(), store.SourceStreaming, "from "+remote); err != nil {
		s.log.Debug("cannot record source state", "err", err)
	}
	sess.lastSeq = src.LastSeq
	sess.partialSeq, sess.partialRecords = src.PartialSeq, src.PartialRecords
	sess.known = src.LastSeq > 0 || src.PartialSeq > 0
	sess.stored = src
	return sess, nil
}

// release unregisters sess.
func (s *Server) release(sess *session) {
	s.mu.Lock()
	if s.live[sess.uuid] == sess {
		delete(s.live, sess.uuid)
	}
	s.mu.Unlock()
	close(sess.done)
	s.sessions.Done()
}

func refusalCode(r pb.Refusal_Reason) codes.Code {
	switch r {
	case pb.Refusal_REASON_NO_CREDENTIALS, pb.Refusal_REASON_BAD_CREDENTIALS,
		pb.Refusal_REASON_TOKEN_EXPIRED, pb.Refusal_REASON_TOKEN_REVOKED:
		return codes.Unauthenticated
	case pb.Refusal_REASON_FORBIDDEN_ROLE, pb.Refusal_REASON_SOURCE_OWNED:
		return codes.PermissionDenied
	case pb.Refusal_REASON_DUPLICATE_SOURCE:
		return codes.AlreadyExists
	case pb.Refusal_REASON_RESOURCE_LIMIT:
		return codes.ResourceExhausted
	case pb.Refusal_REASON_SHUTTING_DOWN, pb.Refusal_REASON_STORAGE_UNAVAILABLE:
		return codes.Unavailable
	case pb.Refusal_REASON_UNSUPPORTED_VERSION:
		return codes.FailedPrecondition
	}
	return codes.InvalidArgument
}
