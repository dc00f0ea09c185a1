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
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/tapstream/tapstream/internal/pcapfile"
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
	DefaultHelloTimeout    = 10 * time.Second
	DefaultShutdownTimeout = 10 * time.Second
	// DefaultMaxStreamsPerConn bounds the sources one connection carries.
	DefaultMaxStreamsPerConn = 64
	DefaultRotateSize        = 256 << 20
	DefaultRotateTime        = 15 * time.Minute
	// handshakeTimeout bounds TLS and HTTP/2 setup of a new connection.
	handshakeTimeout = 10 * time.Second
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
	// Connection limits: in all, and from one address.
	MaxConns, MaxConnsPerIP int
	// MaxStreamsPerConn bounds the sources one connection may stream.
	MaxStreamsPerConn uint32
	// MaxAuthFailures an address may have in a minute before it is
	// refused for a minute.
	MaxAuthFailures int

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
	if c.MaxAuthFailures == 0 {
		c.MaxAuthFailures = DefaultMaxAuthFailures
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

	store    *store.Store
	failures failureLimiter

	mu       sync.Mutex
	live     map[uuid.UUID]*session // streaming now
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
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		pcapDir:  pcapDir,
		pcapRoot: pcapRoot,
		store:    st,
		live:     map[uuid.UUID]*session{},
		shutdown: make(chan struct{}),

		storagePoke: make(chan struct{}, 1),
	}
	if err := s.recoverFiles(context.Background()); err != nil {
		st.Close()
		pcapRoot.Close()
		return nil, err
	}
	if err := s.reconcile(context.Background()); err != nil {
		st.Close()
		pcapRoot.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the state database. Call it after Serve has returned.
func (s *Server) Close() error {
	s.lateCloses.Wait()
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
		}),
		grpc.ConnectionTimeout(handshakeTimeout),
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
	lis = newLimitListener(lis, s.cfg.MaxConns, s.cfg.MaxConnsPerIP, s.log)
	storageCtx, stopStorage := context.WithCancel(context.Background())
	storageDone := make(chan struct{})
	go func() {
		defer close(storageDone)
		if s.cfg.StatusInterval > 0 {
			go s.statusLoop(storageCtx, s.cfg.StatusInterval)
		}
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
	remote := "unknown"
	if p, ok := peer.FromContext(ctx); ok {
		remote = p.Addr.String()
	}
	log := s.log.With("peer", remote)

	hello, err := s.recvHello(stream)
	if err != nil {
		log.Warn("stream ended before Hello", "err", err)
		return err
	}
	ref := checkHello(hello)
	var who string
	if ref == nil {
		who, ref = s.authenticate(ctx, hello, remote)
	}
	var sess *session
	if ref == nil {
		sess, ref = s.admit(hello, remote)
	}
	if ref != nil {
		log.Warn("refused source", "source", hello.GetSourceName(), "uuid", hello.GetSourceUuid(), "reason", ref.Reason, "err", ref.Message)
		stream.Send(&pb.CollectorMessage{Msg: &pb.CollectorMessage_Refusal{Refusal: ref}})
		return status.Error(refusalCode(ref.Reason), ref.Message)
	}
	defer s.release(sess)
	log = log.With("source", sess.name, "uuid", sess.uuid, "session", sess.id)
	sess.log = log
	log.Info("agent connected", "as", who,
		"hostname", hello.Hostname, "os", hello.Os, "arch", hello.Arch,
		"interface", hello.Interface, "link_type", hello.LinkType, "snaplen", hello.Snaplen,
		"filter", hello.Filter, "agent_version", hello.AgentVersion, "resume_after", sess.lastSeq)

	err = stream.Send(&pb.CollectorMessage{Msg: &pb.CollectorMessage_Welcome{Welcome: &pb.Welcome{
		SessionId:             sess.id,
		ResumeAfterSeq:        sess.lastSeq,
		MaxMessageBytes:       uint32(s.cfg.MaxMessageBytes),
		CollectorTimeUnixNano: time.Now().UnixNano(),
	}}})
	if err != nil {
		return err
	}
	err = sess.run(stream)
	if cerr := sess.close(); cerr != nil {
		log.Error("closing capture file failed", "err", cerr)
		err = errors.Join(err, cerr)
	}
	st, _ := status.FromError(err)
	switch {
	case err == nil:
		log.Info("agent finished", sess.summaryAttrs()...)
	case st.Code() == codes.Unavailable || st.Code() == codes.Canceled:
		log.Info("stream ended", append(sess.summaryAttrs(), "reason", err)...)
	default:
		log.Warn("stream ended with an error", append(sess.summaryAttrs(), "err", err)...)
	}
	return err
}

// recvHello waits at most HelloTimeout for the stream's first message.
func (s *Server) recvHello(stream pb.Capture_StreamServer) (*pb.Hello, error) {
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
	case <-time.After(s.cfg.HelloTimeout):
		return nil, status.Errorf(codes.DeadlineExceeded, "no Hello within %v", s.cfg.HelloTimeout)
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

// admit validates hello and registers a session, or returns a refusal.
func (s *Server) admit(h *pb.Hello, remote string) (*session, *pb.Refusal) {
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
		if old.captureID != h.CaptureId {
			return refuse(pb.Refusal_REASON_DUPLICATE_SOURCE,
				"source %s (%s) is already streaming from %s; give each agent's source its own name or uuid", id, name, old.remote)
		}
		// The same capture run reconnecting (its old connection may not
		// have died yet): end the old stream and take over.
		old.kick()
		select {
		case <-old.done:
		case <-time.After(s.cfg.ShutdownTimeout):
			return refuse(pb.Refusal_REASON_DUPLICATE_SOURCE, "previous stream of source %s is still closing", id)
		}
	}
	sess := &session{
		srv:        s,
		id:         uuid.NewString(),
		uuid:       id,
		name:       name,
		captureID:  h.CaptureId,
		remote:     remote,
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
	case pb.Refusal_REASON_FORBIDDEN_ROLE:
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
