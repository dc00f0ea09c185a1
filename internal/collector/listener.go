package collector

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// Defaults for connection limits.
const (
	DefaultMaxConns      = 4096
	DefaultMaxConnsPerIP = 64
)

// limitListener refuses connections beyond max in all or maxPerIP from one
// address: the excess is closed as soon as it is accepted, before any TLS
// or HTTP/2 work, so a flood from one place cannot exhaust the collector.
type limitListener struct {
	net.Listener
	max, maxPerIP int
	log           *slog.Logger

	mu      sync.Mutex
	total   int
	perIP   map[string]int
	lastLog time.Time
}

func newLimitListener(l net.Listener, max, maxPerIP int, log *slog.Logger) *limitListener {
	return &limitListener{Listener: l, max: max, maxPerIP: maxPerIP, log: log, perIP: map[string]int{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c.RemoteAddr().String())
		l.mu.Lock()
		over := l.total >= l.max || l.perIP[ip] >= l.maxPerIP
		if !over {
			l.total++
			l.perIP[ip]++
		}
		logNow := over && time.Since(l.lastLog) > 10*time.Second
		if logNow {
			l.lastLog = time.Now()
		}
		n := l.perIP[ip]
		l.mu.Unlock()
		if over {
			if logNow {
				l.log.Warn("refusing connections over the limit", "addr", ip, "connections_from_addr", n,
					"max_per_addr", l.maxPerIP, "max", l.max)
			}
			c.Close()
			continue
		}
		return &limitConn{Conn: c, l: l, ip: ip}, nil
	}
}

func (l *limitListener) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

type limitConn struct {
	net.Conn
	l    *limitListener
	ip   string
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}
