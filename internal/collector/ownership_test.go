package collector

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/store"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// agentToken adds an agent token that may stream sources matching
// patterns (any when none) and returns it with its id.
func (tc *tlsCollector) agentToken(t *testing.T, name string, patterns ...string) (tok, id string) {
	t.Helper()
	tok, id, hash, err := auth.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	if err := tc.srv.store.AddToken(context.Background(), store.Token{ID: id, Name: name, Role: "agent", Hash: hash, Sources: patterns}); err != nil {
		t.Fatal(err)
	}
	return tok, id
}

// refusedWith sends hello and checks the collector refuses it with reason
// and ends the stream with code.
func refusedWith(t *testing.T, c pb.CaptureClient, h *pb.Hello, reason pb.Refusal_Reason, code codes.Code) *pb.Refusal {
	t.Helper()
	s, m := open(t, c, h)
	r := m.GetRefusal()
	if r == nil || r.Reason != reason {
		t.Fatalf("%s: got %v, want a %v refusal", h.SourceName, m, reason)
	}
	s.wantCode(code, "")
	return r
}

// Freeing a source (sources reassign --to none) ends its owner's live
// stream too, so another credential can claim it.
func TestFreedSourceEndsLiveStream(t *testing.T) {
	tc := startTLSCollector(t, "", func(c *Config) { c.RecheckInterval = 100 * time.Millisecond })
	owner, _ := tc.agentToken(t, "first")
	next, nextID := tc.agentToken(t, "next")
	c := dialTLS(t, tc.addr, auth.ClientOptions{Pin: tc.id.Pin()})
	h := withCreds("freed", &pb.Credentials{Token: owner})
	s, _ := welcome(t, c, h)
	s.send(batchMsg(1, packets(0, 5)))
	s.wantAck(1)
	if _, err := tc.srv.store.SetSourceOwner(context.Background(), "freed", ""); err != nil {
		t.Fatal(err)
	}
	m, err := s.stream.Recv()
	if r := m.GetRefusal(); err != nil || r.GetReason() != pb.Refusal_REASON_SOURCE_OWNED || !strings.Contains(r.GetMessage(), "reassigned to nobody") {
		t.Fatalf("owner's stream after the source was freed: %v %v", m, err)
	}
	s.wantCode(codes.PermissionDenied, "reassigned to nobody")
	h2 := withCreds("freed", &pb.Credentials{Token: next})
	h2.SourceUuid = h.SourceUuid
	if got, err := helloErr(t, c, h2); err != nil || got != pb.Refusal_REASON_UNSPECIFIED {
		t.Fatalf("another credential after the source was freed: %v %v", got, err)
	}
	if o, _ := tc.srv.store.SourceOwner(context.Background(), h.SourceUuid); o != "token:"+nextID {
		t.Fatalf("owner after the claim: %q", o)
	}
}

// An agent token cannot write into another credential's source, by its
// UUID or by its name; nothing of the attacker's is stored, and the
// source keeps its owner's hostname. An admin's reassignment lets the new
// owner in and ends the old owner's live stream.
func TestSourceBelongsToItsCreator(t *testing.T) {
	tc := startTLSCollector(t, "", func(c *Config) { c.RecheckInterval = 100 * time.Millisecond })
	victim, victimID := tc.agentToken(t, "web1-agent")
	attacker, attackerID := tc.agentToken(t, "attacker")
	c := dialTLS(t, tc.addr, auth.ClientOptions{Pin: tc.id.Pin()})

	web1 := withCreds("web1", &pb.Credentials{Token: victim})
	web1.Hostname = "web1.example"
	s, _ := welcome(t, c, web1)
	s.send(batchMsg(1, packets(0, 5)))
	s.wantAck(1)

	byUUID := withCreds("web1", &pb.Credentials{Token: attacker})
	byUUID.SourceUuid, byUUID.Hostname = web1.SourceUuid, "attacker"
	r := refusedWith(t, c, byUUID, pb.Refusal_REASON_SOURCE_OWNED, codes.PermissionDenied)
	for _, want := range []string{"token:" + victimID, "tapstream sources reassign", "--to token:" + attackerID} {
		if !strings.Contains(r.Message, want) {
			t.Errorf("refusal %q does not say %q", r.Message, want)
		}
	}
	byName := withCreds("web1", &pb.Credentials{Token: attacker})
	byName.Hostname = "attacker"
	refusedWith(t, c, byName, pb.Refusal_REASON_SOURCE_OWNED, codes.PermissionDenied)
	renamed := withCreds("other", &pb.Credentials{Token: attacker})
	renamed.SourceUuid = web1.SourceUuid // the victim's UUID under a new name
	refusedWith(t, c, renamed, pb.Refusal_REASON_SOURCE_OWNED, codes.PermissionDenied)

	ctx := context.Background()
	srcs, err := tc.srv.store.Sources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(srcs) != 1 || srcs[0].Hostname != "web1.example" || srcs[0].Owner != "token:"+victimID || srcs[0].Packets != 5 {
		t.Fatalf("sources after the attack: %+v", srcs)
	}
	files, _ := tc.srv.store.Files(ctx)
	for _, f := range files {
		if f.Writer != "token:"+victimID {
			t.Errorf("file %s written by %q, want token:%s", f.Path, f.Writer, victimID)
		}
	}

	// The admin gives web1 to the other token: the old owner's live
	// stream ends, refused, and the new owner streams.
	if _, err := tc.srv.store.SetSourceOwner(ctx, "web1", "token:"+attackerID); err != nil {
		t.Fatal(err)
	}
	m, err := s.stream.Recv()
	if r := m.GetRefusal(); err != nil || r == nil || r.Reason != pb.Refusal_REASON_SOURCE_OWNED || !strings.Contains(r.Message, "reassigned") {
		t.Fatalf("old owner's stream after reassignment: %v %v", m, err)
	}
	s.wantCode(codes.PermissionDenied, "reassigned")
	if got, err := helloErr(t, c, byUUID); err != nil || got != pb.Refusal_REASON_UNSPECIFIED {
		t.Fatalf("new owner after reassignment: %v %v", got, err)
	}
}

// A token made with --sources may stream only names that match.
func TestScopedToken(t *testing.T) {
	tc := startTLSCollector(t, "")
	tok, _ := tc.agentToken(t, "scoped", "web*", "db?")
	c := dialTLS(t, tc.addr, auth.ClientOptions{Pin: tc.id.Pin()})
	for name, ok := range map[string]bool{"web7": true, "db1": true, "db12": false, "mail": false} {
		h := withCreds(name, &pb.Credentials{Token: tok})
		if ok {
			if got, err := helloErr(t, c, h); err != nil || got != pb.Refusal_REASON_UNSPECIFIED {
				t.Errorf("%s: %v %v, want welcome", name, got, err)
			}
			continue
		}
		r := refusedWith(t, c, h, pb.Refusal_REASON_SOURCE_OWNED, codes.PermissionDenied)
		if !strings.Contains(r.Message, "web*,db?") {
			t.Errorf("%s: refusal %q does not name the patterns", name, r.Message)
		}
	}
}

// One credential creates at most MaxSourcesPerOwner sources, however fast
// its Hellos come; its existing sources still stream, and other
// credentials are not affected.
func TestSourcesPerCredentialCapped(t *testing.T) {
	const max = 8
	tc := startTLSCollector(t, "", func(c *Config) { c.MaxSourcesPerOwner = max })
	greedy, greedyID := tc.agentToken(t, "greedy")
	other, _ := tc.agentToken(t, "other")
	c := dialTLS(t, tc.addr, auth.ClientOptions{Pin: tc.id.Pin()})

	var wg sync.WaitGroup
	var mu sync.Mutex
	reasons := map[pb.Refusal_Reason]int{}
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// Credentials in the headers too, as agents send them.
			st, err := c.Stream(metadata.AppendToOutgoingContext(ctx, auth.MetadataToken, greedy))
			if err != nil {
				t.Error(err)
				return
			}
			h := withCreds("greedy-"+string(rune('a'+i%26))+string(rune('a'+i/26)), &pb.Credentials{Token: greedy})
			st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: h}})
			m, err := st.Recv()
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			reasons[m.GetRefusal().GetReason()]++
			mu.Unlock()
			st.CloseSend()
			for err == nil {
				_, err = st.Recv()
			}
		}()
	}
	wg.Wait()
	if reasons[pb.Refusal_REASON_UNSPECIFIED] != max || reasons[pb.Refusal_REASON_RESOURCE_LIMIT] != 40-max {
		t.Fatalf("40 concurrent new sources from one token: %v, want %d welcomed and the rest RESOURCE_LIMIT", reasons, max)
	}
	srcs, _ := tc.srv.store.Sources(context.Background())
	owned := 0
	for _, s := range srcs {
		if s.Owner == "token:"+greedyID {
			owned++
		}
	}
	if owned != max {
		t.Fatalf("token owns %d sources, want %d", owned, max)
	}
	if got, err := helloErr(t, c, withCreds("other-1", &pb.Credentials{Token: other})); err != nil || got != pb.Refusal_REASON_UNSPECIFIED {
		t.Fatalf("another token after the cap: %v %v", got, err)
	}
}

// A stream that sends Hello and then nothing ends after the idle timeout;
// one that sends keepalives as Welcome asks stays.
func TestIdleStreamEnds(t *testing.T) {
	const timeout = 3 * time.Second
	tc := startCollector(t, func(c *Config) { c.StreamIdleTimeout = timeout })
	c := dial(t, tc.addr)

	silent, w := welcome(t, c, newHello("squatter"))
	if got := time.Duration(w.KeepaliveIntervalMs) * time.Millisecond; got != timeout/3 {
		t.Fatalf("Welcome asks for keepalives every %v, want %v", got, timeout/3)
	}
	alive, w := welcome(t, c, newHello("idle-agent"))
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := silent.stream.Recv(); err != nil {
				done <- err
				return
			}
		}
	}()
	tick := time.NewTicker(time.Duration(w.KeepaliveIntervalMs) * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-tick.C:
			alive.send(&pb.AgentMessage{Msg: &pb.AgentMessage_Keepalive{Keepalive: &pb.Keepalive{}}})
		}
	}
	if code := status.Code(err); code != codes.DeadlineExceeded {
		t.Fatalf("silent stream ended with %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took < timeout-500*time.Millisecond || took > timeout+2*time.Second {
		t.Fatalf("silent stream ended after %v, want about %v", took, timeout)
	}
	// The agent that sent only keepalives all along still streams.
	alive.send(batchMsg(1, packets(0, 3)))
	alive.wantAck(1)
}

// Revoking the token of a live stream ends it within seconds, with a
// refusal that tells the agent to stop.
func TestRevocationEndsLiveStream(t *testing.T) {
	tc := startTLSCollector(t, "", func(c *Config) { c.RecheckInterval = 200 * time.Millisecond })
	tok, id := tc.agentToken(t, "soon-revoked")
	c := dialTLS(t, tc.addr, auth.ClientOptions{Pin: tc.id.Pin()})
	s, _ := welcome(t, c, withCreds("revoked-live", &pb.Credentials{Token: tok}))
	s.send(batchMsg(1, packets(0, 3)))
	s.wantAck(1)

	if n, err := tc.srv.store.RevokeToken(context.Background(), id); err != nil || n != 1 {
		t.Fatalf("revoke: %d %v", n, err)
	}
	revoked := time.Now()
	m, err := s.stream.Recv()
	if r := m.GetRefusal(); err != nil || r == nil || r.Reason != pb.Refusal_REASON_TOKEN_REVOKED {
		t.Fatalf("after revocation: %v %v, want a TOKEN_REVOKED refusal", m, err)
	}
	s.wantCode(codes.Unauthenticated, "revoked")
	if took := time.Since(revoked); took > 2*time.Second {
		t.Fatalf("live stream ended %v after revocation", took)
	}
	t.Logf("live stream ended %v after its token was revoked", time.Since(revoked).Round(time.Millisecond))

	// The same for a user disabled while streaming.
	hash, _ := auth.HashPassword("sensor-password")
	ctx := context.Background()
	if err := tc.srv.store.AddUser(ctx, store.User{Name: "sensor", Role: "agent", Hash: hash}); err != nil {
		t.Fatal(err)
	}
	u, _ := welcome(t, c, withCreds("by-user", &pb.Credentials{User: "sensor", Password: "sensor-password"}))
	if ok, err := tc.srv.store.DisableUser(ctx, "sensor"); err != nil || !ok {
		t.Fatalf("disable: %v %v", ok, err)
	}
	m, err = u.stream.Recv()
	if r := m.GetRefusal(); err != nil || r == nil || r.Reason != pb.Refusal_REASON_BAD_CREDENTIALS {
		t.Fatalf("after disabling the user: %v %v, want a BAD_CREDENTIALS refusal", m, err)
	}
	u.wantCode(codes.Unauthenticated, "disabled")
}
