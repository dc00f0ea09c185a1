package admission

import (
	"container/list"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Listen wraps l: every connection it accepts is tracked, capped and given
// HelloTimeout to authenticate a stream.
func (c *Controller) Listen(l net.Listener) net.Listener {
	return &listener{Listener: l, c: c}
}

type listener struct {
	net.Listener
	c *Controller
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if conn := l.c.accept(nc); conn != nil {
			return conn, nil
		}
	}
}

// accept admits nc as an unauthenticated connection, or closes it when
// its address is over its cap. A full pre-authentication budget closes
// the oldest unauthenticated connection to make room.
func (c *Controller) accept(nc net.Conn) *Conn {
	ip := hostOf(nc.RemoteAddr().String())
	proxy := c.trusted(ip)
	conn := &Conn{Conn: nc, c: c, ip: ip, proxy: proxy, accepted: time.Now()}
	conn.addr = &Addr{Addr: nc.RemoteAddr(), conn: conn}
	conn.timer = time.AfterFunc(c.cfg.HelloTimeout, conn.expire)
	c.mu.Lock()
	if !proxy && c.perAddr[ip] >= c.cfg.MaxConnsPerAddr {
		n := c.perAddr[ip]
		c.mu.Unlock()
		conn.timer.Stop()
		c.log.Warn("refusing connections over the limit", "addr", ip, "connections_from_addr", n,
			"max_per_addr", c.cfg.MaxConnsPerAddr)
		nc.Close()
		return nil
	}
	var evict *Conn
	if c.preAuth.Len() >= c.cfg.MaxPreAuthConns {
		evict = c.preAuth.Front().Value.(*Conn)
		c.preAuth.Remove(evict.elem)
		evict.elem = nil
	}
	conn.elem = c.preAuth.PushBack(conn)
	if !proxy {
		c.perAddr[ip]++
	}
	c.mu.Unlock()
	if evict != nil {
		c.log.Warn("closing the oldest unauthenticated connection: too many unauthenticated connections",
			"addr", evict.ip, "age", time.Since(evict.accepted).Round(time.Millisecond), "max_preauth_conns", c.cfg.MaxPreAuthConns)
		evict.Close()
	}
	return conn
}

// Conn is an accepted connection. Its RemoteAddr is an *Addr, which gRPC
// hands to every stream as the peer address: ConnOf finds the Conn again.
type Conn struct {
	net.Conn
	c        *Controller
	ip       string
	proxy    bool
	accepted time.Time
	addr     *Addr
	timer    *time.Timer

	// Under c.mu.
	elem    *list.Element // in c.preAuth while unauthenticated
	authed  bool
	aborted int // streams ended before Hello in this window
	window  time.Time

	closeOnce sync.Once
	closed    atomic.Bool
}

// Addr is a connection's remote address, carrying the connection.
type Addr struct {
	net.Addr
	conn *Conn
}

// ConnOf returns the connection behind a peer address, or nil when the
// address did not come from a Controller's listener.
func ConnOf(a net.Addr) *Conn {
	if ca, ok := a.(*Addr); ok {
		return ca.conn
	}
	return nil
}

// RemoteAddr returns an *Addr.
func (c *Conn) RemoteAddr() net.Addr { return c.addr }

// Close closes the connection and gives back its place.
func (c *Conn) Close() error {
	c.closed.Store(true)
	err := c.Conn.Close()
	c.closeOnce.Do(c.release)
	return err
}

func (c *Conn) release() {
	c.timer.Stop()
	ctl := c.c
	ctl.mu.Lock()
	defer ctl.mu.Unlock()
	if c.elem != nil {
		ctl.preAuth.Remove(c.elem)
		c.elem = nil
	}
	if c.authed {
		ctl.authConns--
	}
	if !c.proxy {
		if ctl.perAddr[c.ip]--; ctl.perAddr[c.ip] <= 0 {
			delete(ctl.perAddr, c.ip)
		}
	}
}

// expire closes the connection if none of its streams has authenticated.
func (c *Conn) expire() {
	c.c.mu.Lock()
	pending := c.elem != nil
	c.c.mu.Unlock()
	if pending && !c.closed.Load() {
		c.c.log.Warn("closing a connection that did not authenticate in time", "addr", c.ip,
			"hello_timeout", c.c.cfg.HelloTimeout)
		c.Close()
	}
}

// authenticate moves the connection to the authenticated budget; false
// when that budget is full.
func (c *Conn) authenticate() bool {
	ctl := c.c
	ctl.mu.Lock()
	defer ctl.mu.Unlock()
	if c.authed {
		return true
	}
	if ctl.authConns >= ctl.cfg.MaxConns {
		return false
	}
	if c.elem != nil {
		ctl.preAuth.Remove(c.elem)
		c.elem = nil
	}
	c.authed = true
	ctl.authConns++
	c.timer.Stop()
	return true
}

// streamAborted counts a stream that ended before its Hello, and closes
// the connection when it has ended too many.
func (c *Conn) streamAborted() {
	ctl := c.c
	now := time.Now()
	ctl.mu.Lock()
	if now.Sub(c.window) > time.Minute {
		c.window, c.aborted = now, 0
	}
	c.aborted++
	over := c.aborted > ctl.cfg.MaxAbortedStreams
	ctl.mu.Unlock()
	if over && !c.closed.Load() {
		ctl.log.Warn("closing a connection that opened too many streams without a Hello", "addr", c.ip,
			"max_per_minute", ctl.cfg.MaxAbortedStreams)
		c.Close()
	}
}

func hostOf(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}
