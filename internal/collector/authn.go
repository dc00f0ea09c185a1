package collector

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/store"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// Limits on Hello fields: anything longer is refused before it is logged
// or stored.
var helloLimits = []struct {
	name string
	get  func(*pb.Hello) string
	max  int
}{
	{"source_uuid", (*pb.Hello).GetSourceUuid, 64},
	{"source_name", (*pb.Hello).GetSourceName, 256},
	{"capture_id", (*pb.Hello).GetCaptureId, 64},
	{"hostname", (*pb.Hello).GetHostname, 255},
	{"os", (*pb.Hello).GetOs, 32},
	{"arch", (*pb.Hello).GetArch, 32},
	{"interface", (*pb.Hello).GetInterface, 256},
	{"interface_description", (*pb.Hello).GetInterfaceDescription, 512},
	{"filter", (*pb.Hello).GetFilter, 4096},
	{"agent_version", (*pb.Hello).GetAgentVersion, 64},
	{"token", func(h *pb.Hello) string { return h.GetCredentials().GetToken() }, 128},
	{"user", func(h *pb.Hello) string { return h.GetCredentials().GetUser() }, 128},
	{"password", func(h *pb.Hello) string { return h.GetCredentials().GetPassword() }, 1024},
}

const maxHelloAddresses = 64

// checkHello refuses a Hello whose fields are out of bounds.
func checkHello(h *pb.Hello) *pb.Refusal {
	for _, l := range helloLimits {
		if len(l.get(h)) > l.max {
			return &pb.Refusal{Reason: pb.Refusal_REASON_INVALID_HELLO, Message: fmt.Sprintf("%s longer than %d bytes", l.name, l.max)}
		}
	}
	if len(h.Addresses) > maxHelloAddresses {
		return &pb.Refusal{Reason: pb.Refusal_REASON_INVALID_HELLO, Message: fmt.Sprintf("more than %d addresses", maxHelloAddresses)}
	}
	for _, a := range h.Addresses {
		if len(a) > 64 {
			return &pb.Refusal{Reason: pb.Refusal_REASON_INVALID_HELLO, Message: "address longer than 64 bytes"}
		}
	}
	return nil
}

// principal is who a stream authenticated as.
type principal struct {
	// owner is the stable key sources and files are recorded under:
	// "token:ID", "user:NAME", "cert:SUBJECT", or "insecure".
	owner string
	// display is for logs and messages: the token's name too.
	display string
	// sources are the name patterns (path.Match) a scoped token may
	// stream; empty allows any name.
	sources []string
}

// insecurePrincipal is everyone when the collector runs without TLS.
var insecurePrincipal = principal{owner: store.OwnerInsecure, display: "anonymous (insecure)"}

// mayName reports whether p may create or stream a source called name.
func (p principal) mayName(name string) bool {
	if len(p.sources) == 0 {
		return true
	}
	for _, pat := range p.sources {
		if ok, _ := path.Match(pat, name); ok {
			return true
		}
	}
	return false
}

// authenticate decides who the agent is, from a client certificate or the
// credentials in its Hello. It returns the principal, or a typed refusal.
// Failures count towards the address's rate limit.
func (s *Server) authenticate(ctx context.Context, h *pb.Hello, remote string) (principal, *pb.Refusal) {
	if s.cfg.TLS == nil {
		return insecurePrincipal, nil
	}
	ip := remoteIP(remote)
	if wait := s.failures.blocked(ip); wait > 0 {
		return principal{}, &pb.Refusal{Reason: pb.Refusal_REASON_RESOURCE_LIMIT,
			Message: fmt.Sprintf("too many failed attempts from %s; try again in %v", ip, wait.Round(time.Second))}
	}
	who, ref := s.checkCredentials(ctx, h)
	if ref != nil {
		if s.failures.fail(ip, s.cfg.MaxAuthFailures) {
			s.log.Warn("rate-limiting an address after repeated failed authentication", "addr", ip,
				"failures", s.cfg.MaxAuthFailures, "block", failureBlock)
		}
	}
	return who, ref
}

// certPrincipal is the principal of a verified client certificate, if
// the stream has one.
func certPrincipal(ctx context.Context) (principal, bool) {
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			subj := ti.State.VerifiedChains[0][0].Subject.String()
			return principal{owner: "cert:" + subj, display: "certificate " + subj}, true
		}
	}
	return principal{}, false
}

// checkCredentials checks the credentials a stream presents: a client
// certificate, or the token or user in its Hello.
func (s *Server) checkCredentials(ctx context.Context, h *pb.Hello) (principal, *pb.Refusal) {
	if p, ok := certPrincipal(ctx); ok {
		return p, nil
	}
	c := h.GetCredentials()
	switch {
	case c.GetToken() != "":
		id, secret, err := auth.ParseToken(c.GetToken())
		if err != nil {
			return principal{}, refusal(pb.Refusal_REASON_BAD_CREDENTIALS, "the token is not a tapstream token (tst_...)")
		}
		t, err := s.store.GetToken(ctx, id)
		if errors.Is(err, store.ErrNotFound) || err == nil && !auth.SecretMatches(secret, t.Hash) {
			return principal{}, refusal(pb.Refusal_REASON_BAD_CREDENTIALS, "unknown or wrong token")
		}
		if err != nil {
			s.log.Error("state database", "err", err)
			return principal{}, refusal(pb.Refusal_REASON_STORAGE_UNAVAILABLE, "collector cannot check the token now")
		}
		if ref := tokenValid(t); ref != nil {
			return principal{}, ref
		}
		s.store.TouchToken(ctx, t.ID)
		return principal{owner: "token:" + t.ID, display: "token " + t.ID + " (" + t.Name + ")", sources: t.Sources}, nil
	case c.GetUser() != "":
		u, err := s.store.GetUser(ctx, c.GetUser())
		if errors.Is(err, store.ErrNotFound) {
			auth.DummyPasswordCheck(c.GetPassword())
			return principal{}, refusal(pb.Refusal_REASON_BAD_CREDENTIALS, "unknown user or wrong password")
		}
		if err != nil {
			s.log.Error("state database", "err", err)
			return principal{}, refusal(pb.Refusal_REASON_STORAGE_UNAVAILABLE, "collector cannot check the password now")
		}
		if !auth.PasswordMatches(c.GetPassword(), u.Hash) || u.Disabled {
			return principal{}, refusal(pb.Refusal_REASON_BAD_CREDENTIALS, "unknown user or wrong password")
		}
		if !auth.Role(u.Role).MayStream() {
			return principal{}, refusal(pb.Refusal_REASON_FORBIDDEN_ROLE, "user %s has role %s; streaming needs role agent", u.Name, u.Role)
		}
		return principal{owner: "user:" + u.Name, display: "user " + u.Name}, nil
	}
	return principal{}, refusal(pb.Refusal_REASON_NO_CREDENTIALS,
		"this collector needs credentials: --token (make one with `tapstream token create --role agent`) or --user and --password")
}

// tokenValid refuses a token that is revoked, expired or may not stream.
func tokenValid(t store.Token) *pb.Refusal {
	switch {
	case !t.RevokedAt.IsZero():
		return refusal(pb.Refusal_REASON_TOKEN_REVOKED, "token %s (%s) was revoked on %s", t.ID, t.Name, t.RevokedAt.UTC().Format(time.RFC3339))
	case !t.ExpiresAt.IsZero() && time.Now().After(t.ExpiresAt):
		return refusal(pb.Refusal_REASON_TOKEN_EXPIRED, "token %s (%s) expired on %s", t.ID, t.Name, t.ExpiresAt.UTC().Format(time.RFC3339))
	case !auth.Role(t.Role).MayStream():
		return refusal(pb.Refusal_REASON_FORBIDDEN_ROLE, "token %s has role %s; streaming needs an agent token (tapstream token create --role agent)", t.ID, t.Role)
	}
	return nil
}

func refusal(r pb.Refusal_Reason, format string, args ...any) *pb.Refusal {
	return &pb.Refusal{Reason: r, Message: fmt.Sprintf(format, args...)}
}

func remoteIP(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// Rate limit on failed authentication, per address.
const (
	// DefaultMaxAuthFailures is how many failures a minute an address may
	// have before it is blocked for a minute.
	DefaultMaxAuthFailures = 10
	failureWindow          = time.Minute
	failureBlock           = time.Minute
	failureTrack           = 10000 // addresses remembered at most
)

// failureLimiter blocks an address for failureBlock after a number of
// failures within failureWindow.
type failureLimiter struct {
	mu   sync.Mutex
	addr map[string]*failures
}

type failures struct {
	n            int
	windowStart  time.Time
	blockedUntil time.Time
}

func (l *failureLimiter) blocked(ip string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.addr[ip]; f != nil {
		return time.Until(f.blockedUntil)
	}
	return 0
}

// fail records a failure and reports whether it started a block.
func (l *failureLimiter) fail(ip string, limit int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.addr == nil {
		l.addr = map[string]*failures{}
	}
	if len(l.addr) >= failureTrack {
		for k, f := range l.addr {
			if now.Sub(f.windowStart) > failureWindow && now.After(f.blockedUntil) {
				delete(l.addr, k)
			}
		}
	}
	f := l.addr[ip]
	if f == nil || now.Sub(f.windowStart) > failureWindow {
		f = &failures{windowStart: now}
		l.addr[ip] = f
	}
	f.n++
	if f.n >= limit && now.After(f.blockedUntil) {
		f.blockedUntil = now.Add(failureBlock)
		f.n = 0
		return true
	}
	return false
}
