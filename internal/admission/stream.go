package admission

import (
	"context"
	"net"
	"net/netip"
	"strings"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// Stream is one stream's admission: where it comes from, and the places
// it holds until Done.
type Stream struct {
	c    *Controller
	conn *Conn // nil when the stream came through another listener
	// Addr is the client's address: the one a trusted proxy forwarded,
	// otherwise the peer's IP. Limits apply to it.
	Addr string
	// Peer is the connection's remote address (ip:port).
	Peer string
	// Proxy is set when the stream came through a trusted proxy.
	Proxy bool

	authed, proxied bool
}

// Stream admits a new stream, before anything is read from it. It fails
// with ErrBusy when too many streams are unauthenticated, in all or from
// the stream's forwarded address.
func (c *Controller) Stream(ctx context.Context) (*Stream, error) {
	s := &Stream{c: c, Peer: "unknown", Addr: "unknown"}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		s.Peer = p.Addr.String()
		s.Addr = hostOf(s.Peer)
		s.conn = ConnOf(p.Addr)
	}
	if c.trusted(s.Addr) {
		if fwd := forwarded(ctx); fwd != "" {
			s.Addr, s.Proxy = fwd, true
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.preAuthStreams >= c.cfg.MaxPreAuthStreams {
		return nil, ErrBusy
	}
	if s.Proxy {
		if c.proxied[s.Addr] >= c.cfg.MaxConnsPerAddr {
			return nil, ErrBusy
		}
		c.proxied[s.Addr]++
		s.proxied = true
	}
	c.preAuthStreams++
	return s, nil
}

// forwarded returns the client address a proxy put in the request
// headers: X-Real-IP, else the last X-Forwarded-For entry (the one the
// proxy itself appended).
func forwarded(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-real-ip"); len(v) > 0 {
		if a, err := netip.ParseAddr(strings.TrimSpace(v[len(v)-1])); err == nil {
			return a.Unmap().String()
		}
	}
	if v := md.Get("x-forwarded-for"); len(v) > 0 {
		parts := strings.Split(v[len(v)-1], ",")
		last := strings.TrimSpace(parts[len(parts)-1])
		if h, _, err := net.SplitHostPort(last); err == nil {
			last = h
		}
		if a, err := netip.ParseAddr(last); err == nil {
			return a.Unmap().String()
		}
	}
	return ""
}

// EndedBeforeHello records that the client ended the stream (or let it
// time out) before sending Hello. A connection that does this too often
// is closed: opening and resetting streams costs the client nothing.
//
// A trusted proxy's connection is left open: it may carry other clients'
// streams, and the proxy answers for its own clients.
func (s *Stream) EndedBeforeHello() {
	if s.conn != nil && !s.conn.proxy {
		s.conn.streamAborted()
	}
}

// CloseConn closes the stream's connection, ending every stream on it: for
// a client that stopped reading, whose stream cannot otherwise be ended.
// A trusted proxy's connection carries other clients and is left open;
// CloseConn then reports false.
func (s *Stream) CloseConn() bool {
	if s.conn == nil || s.conn.proxy {
		return false
	}
	s.conn.Close()
	return true
}

// Authenticated records that the stream authenticated; its connection
// moves to the authenticated budget. It fails with ErrConnCap when that
// budget is full.
func (s *Stream) Authenticated() error {
	if s.authed {
		return nil
	}
	if s.conn != nil && !s.conn.authenticate() {
		return ErrConnCap
	}
	s.c.mu.Lock()
	s.c.preAuthStreams--
	s.authed = true
	s.c.mu.Unlock()
	return nil
}

// Done gives back the stream's places.
func (s *Stream) Done() {
	s.c.mu.Lock()
	if !s.authed {
		s.c.preAuthStreams--
	}
	if s.proxied {
		if s.c.proxied[s.Addr]--; s.c.proxied[s.Addr] <= 0 {
			delete(s.c.proxied, s.Addr)
		}
	}
	s.c.mu.Unlock()
}

// LegacyHello takes one of the few places for reading a Hello whose
// stream carried no credentials in its headers: such a Hello's size is
// known only once it is read. It returns the function that gives the
// place back, or ErrBusy.
func (s *Stream) LegacyHello() (func(), error) {
	select {
	case s.c.legacy <- struct{}{}:
		return func() { <-s.c.legacy }, nil
	default:
		return nil, ErrBusy
	}
}

// Busy reports, cheaply and without waiting, whether a new stream would
// be refused: the unauthenticated streams are at their cap, or the
// stream carries no credentials in its headers (withCredentials false)
// while the places for such Hellos are taken. It is meant for gRPC's tap,
// which runs before a stream is created: a stream refused there is reset
// at once, and the data its client sends is never buffered.
func (c *Controller) Busy(withCredentials bool) bool {
	if !withCredentials && len(c.legacy) == cap(c.legacy) {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.preAuthStreams >= c.cfg.MaxPreAuthStreams
}
