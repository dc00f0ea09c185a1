// Package admission decides what the collector serves before it knows who
// is on the other end: connection caps, the deadline to authenticate, caps
// on unauthenticated streams, the login limiter, the bound on password
// checks, and which proxies may say where a stream comes from.
//
// Its rule: unauthenticated work never pushes out authenticated work. A
// connection counts against the pre-authentication budget until one of its
// streams authenticates; when that budget is full, the oldest
// unauthenticated connection is closed, never an authenticated one.
package admission

import (
	"container/list"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Defaults for Config.
const (
	DefaultMaxConns          = 4096
	DefaultMaxConnsPerAddr   = 64
	DefaultMaxPreAuthConns   = 1024
	DefaultMaxPreAuthStreams = 1024
	DefaultHelloTimeout      = 5 * time.Second
	DefaultMaxAuthFailures   = 10
	DefaultPasswordQueue     = 16
	DefaultMaxAbortedStreams = 32
	// DefaultLegacyHellos bounds Hellos read at once from streams that
	// carry no credentials in their headers (agents older than this
	// check): their size is unknown until read.
	DefaultLegacyHellos = 1
)

// DefaultPasswordChecks is how many bcrypt checks run at once: a quarter
// of the cores, at least one, so that guesses never take every core.
var DefaultPasswordChecks = max(1, runtime.NumCPU()/4)

// Config sets the limits. Zero values take the defaults.
type Config struct {
	// MaxConns bounds authenticated connections.
	MaxConns int
	// MaxConnsPerAddr bounds connections from one address, and streams
	// from one forwarded address behind a trusted proxy. A trusted
	// proxy's own connections count only against MaxConns.
	MaxConnsPerAddr int
	// MaxPreAuthConns bounds connections none of whose streams has
	// authenticated yet; past it the oldest of them is closed.
	MaxPreAuthConns int
	// MaxPreAuthStreams bounds streams that have not authenticated.
	MaxPreAuthStreams int
	// HelloTimeout is how long a new connection has to authenticate a
	// stream (TLS handshake included).
	HelloTimeout time.Duration
	// TrustedProxies may forward a client's address in X-Real-IP or
	// X-Forwarded-For.
	TrustedProxies []netip.Prefix
	// MaxAuthFailures one credential may have from one address in a
	// minute before it is refused there for a minute.
	MaxAuthFailures int
	// PasswordChecks bounds bcrypt checks running at once; PasswordQueue
	// how many more may wait for one (briefly) before being refused.
	PasswordChecks, PasswordQueue int
	// MaxAbortedStreams is how many streams a connection may end before
	// their Hello within a minute before the connection is closed.
	MaxAbortedStreams int
	// LegacyHellos bounds Hellos read at once from streams without
	// credentials in their headers.
	LegacyHellos int
	Logger       *slog.Logger
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxConns, DefaultMaxConns)
	def(&c.MaxConnsPerAddr, DefaultMaxConnsPerAddr)
	def(&c.MaxPreAuthConns, DefaultMaxPreAuthConns)
	def(&c.MaxPreAuthStreams, DefaultMaxPreAuthStreams)
	def(&c.MaxAuthFailures, DefaultMaxAuthFailures)
	def(&c.PasswordChecks, DefaultPasswordChecks)
	def(&c.PasswordQueue, DefaultPasswordQueue)
	def(&c.MaxAbortedStreams, DefaultMaxAbortedStreams)
	def(&c.LegacyHellos, DefaultLegacyHellos)
	if c.HelloTimeout == 0 {
		c.HelloTimeout = DefaultHelloTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// ParseTrustedProxies reads CIDRs (or single addresses) of trusted proxies.
func ParseTrustedProxies(specs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range specs {
		for _, part := range strings.Split(s, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			p, err := netip.ParsePrefix(part)
			if err != nil {
				a, aerr := netip.ParseAddr(part)
				if aerr != nil {
					return nil, fmt.Errorf("trusted proxy %q: want a CIDR such as 10.0.0.0/8 or an address: %w", part, err)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

// Errors a stream is refused with.
var (
	// ErrBusy: a cap on unauthenticated work is reached; try again soon.
	ErrBusy = errors.New("collector busy with unauthenticated connections")
	// ErrConnCap: the cap on authenticated connections is reached.
	ErrConnCap = errors.New("collector at its connection limit")
)

// BlockedError refuses a login attempt: too many failures, or too many
// attempts at once, for one credential from one address.
type BlockedError struct {
	Addr string
	Wait time.Duration
}

func (e *BlockedError) Error() string {
	return fmt.Sprintf("too many failed or concurrent attempts with this credential from %s; try again in %v",
		e.Addr, e.Wait.Round(time.Second))
}

// Controller holds the admission state of one collector.
type Controller struct {
	cfg Config
	log *slog.Logger

	mu             sync.Mutex
	preAuth        list.List // unauthenticated *Conn, oldest first
	authConns      int
	perAddr        map[string]int // connections per address (not proxies)
	preAuthStreams int
	proxied        map[string]int // streams per forwarded address

	limiter   limiter
	passwords semaphore
	// passwordsByAddr counts password checks running or waiting per
	// client address, so one address cannot fill the queue by spraying
	// user names (each name its own limiter entry).
	passwordsByAddr map[string]int
	legacy          chan struct{}
}

// New returns a Controller with cfg's limits.
func New(cfg Config) *Controller {
	cfg.setDefaults()
	return &Controller{
		cfg:     cfg,
		log:     cfg.Logger,
		perAddr: map[string]int{},
		proxied: map[string]int{},

		passwordsByAddr: map[string]int{},
		limiter:         limiter{max: cfg.MaxAuthFailures, entries: map[string]*attempts{}},
		passwords:       newSemaphore(cfg.PasswordChecks, cfg.PasswordQueue, time.Second),
		legacy:          make(chan struct{}, cfg.LegacyHellos),
	}
}

// HelloTimeout is the deadline for a stream's Hello.
func (c *Controller) HelloTimeout() time.Duration { return c.cfg.HelloTimeout }

// Stats is a snapshot of the counts, for tests and status.
type Stats struct {
	PreAuthConns, AuthConns, PreAuthStreams int
}

// Stats returns the current counts.
func (c *Controller) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{PreAuthConns: c.preAuth.Len(), AuthConns: c.authConns, PreAuthStreams: c.preAuthStreams}
}

// trusted reports whether ip is a trusted proxy.
func (c *Controller) trusted(ip string) bool {
	if len(c.cfg.TrustedProxies) == 0 {
		return false
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range c.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
