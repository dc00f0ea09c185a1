package collector

import (
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/tapstream/tapstream/internal/admission"
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

// authenticate decides who the agent is, from a client certificate or the
// credentials in h, under the login limiter: attempts are counted per
// credential and client address from the moment they start, and password
// checks wait for one of a few places so guesses cannot starve token
// checks or the rest of the collector.
func (s *Server) authenticate(ctx context.Context, h *pb.Hello, st *admission.Stream) (principal, *pb.Refusal) {
	if s.cfg.TLS == nil {
		return insecurePrincipal, nil
	}
	var who principal
	var ref *pb.Refusal
	err := st.Login(ctx, credentialOf(ctx, h), func() (bool, bool) {
		who, ref = s.checkCredentials(ctx, h)
		if ref == nil {
			return true, false
		}
		return false, ref.Reason != pb.Refusal_REASON_STORAGE_UNAVAILABLE
	})
	var blocked *admission.BlockedError
	switch {
	case errors.As(err, &blocked):
		return who, &pb.Refusal{Reason: pb.Refusal_REASON_RESOURCE_LIMIT, Message: blocked.Error()}
	case errors.Is(err, admission.ErrBusy):
		return who, &pb.Refusal{Reason: pb.Refusal_REASON_RESOURCE_LIMIT,
			Message: "collector busy checking passwords; try again in a few seconds (tokens are checked without waiting)"}
	case err != nil:
		return who, &pb.Refusal{Reason: pb.Refusal_REASON_RESOURCE_LIMIT, Message: fmt.Sprintf("authentication: %v", err)}
	}
	return who, ref
}

// credentialOf names what h presents, for the login limiter.
func credentialOf(ctx context.Context, h *pb.Hello) admission.Credential {
	if hasClientCert(ctx) {
		return admission.Credential{ID: "cert", Unguessable: true}
	}
	c := h.GetCredentials()
	switch {
	case c.GetToken() != "":
		id, _, err := auth.ParseToken(c.GetToken())
		if err != nil {
			return admission.Credential{ID: "token:malformed"}
		}
		return admission.Credential{ID: "token:" + id, Unguessable: true}
	case c.GetUser() != "":
		return admission.Credential{ID: "user:" + c.GetUser(), Password: true}
	}
	return admission.Credential{ID: "none"}
}

func hasClientCert(ctx context.Context) bool {
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			return true
		}
	}
	return false
}

// hasHeaderCredentials reports whether the stream's request headers
// carry credentials.
func hasHeaderCredentials(ctx context.Context) bool {
	c, _ := metadataCredentials(ctx)
	return c != nil
}

// metadataCredentials returns the credentials an agent sent in its
// request headers, so that it can be authenticated before its first
// message is read; nil when there are none.
func metadataCredentials(ctx context.Context) (*pb.Credentials, *pb.Refusal) {
	md, _ := metadata.FromIncomingContext(ctx)
	get := func(k string) string {
		if v := md.Get(k); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	c := &pb.Credentials{Token: get(auth.MetadataToken), User: get(auth.MetadataUser), Password: get(auth.MetadataPassword)}
	if c.Token == "" && c.User == "" {
		return nil, nil
	}
	if ref := checkHello(&pb.Hello{Credentials: c}); ref != nil {
		return nil, ref
	}
	return c, nil
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
