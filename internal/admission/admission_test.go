package admission

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

func TestLimiterCountsAttemptsInFlight(t *testing.T) {
	c := New(Config{MaxAuthFailures: 3})
	s := &Stream{c: c, Addr: "192.0.2.1"}
	release := make(chan struct{})
	var started, blocked atomic.Int32
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Login(context.Background(), Credential{ID: "user:a"}, func() (bool, bool) {
				started.Add(1)
				<-release
				return false, true
			})
			var b *BlockedError
			if errors.As(err, &b) {
				blocked.Add(1)
			}
		}()
	}
	for started.Load()+blocked.Load() < 10 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if started.Load() != 3 || blocked.Load() != 7 {
		t.Fatalf("%d checks ran and %d were blocked, want 3 and 7", started.Load(), blocked.Load())
	}
	// The credential is blocked from that address; another is not, nor
	// the same from another address.
	if err := s.Login(context.Background(), Credential{ID: "user:a"}, func() (bool, bool) { return true, false }); err == nil {
		t.Fatal("blocked credential was checked")
	}
	if err := s.Login(context.Background(), Credential{ID: "token:b"}, func() (bool, bool) { return true, false }); err != nil {
		t.Fatalf("another credential from the same address: %v", err)
	}
	other := &Stream{c: c, Addr: "192.0.2.2"}
	if err := other.Login(context.Background(), Credential{ID: "user:a"}, func() (bool, bool) { return true, false }); err != nil {
		t.Fatalf("the credential from another address: %v", err)
	}
}

func TestPasswordChecksBounded(t *testing.T) {
	c := New(Config{PasswordChecks: 2, PasswordQueue: 3, MaxAuthFailures: 1000})
	release := make(chan struct{})
	var running, peak, busy atomic.Int32
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &Stream{c: c, Addr: fmt.Sprintf("192.0.2.%d", i+1)} // one address each: see TestPasswordChecksPerAddress
			err := s.Login(context.Background(), Credential{ID: "user:" + string(rune('a'+i)), Password: true}, func() (bool, bool) {
				n := running.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				<-release
				running.Add(-1)
				return false, true
			})
			if errors.Is(err, ErrBusy) {
				busy.Add(1)
			}
		}()
	}
	// 2 run, 3 wait, 15 are refused at once.
	for busy.Load() < 15 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if peak.Load() != 2 {
		t.Fatalf("%d password checks ran at once, want 2", peak.Load())
	}
}

// One address spraying user names (each its own limiter entry) holds at
// most two places in the password queue: another address's user still
// gets its check.
func TestPasswordChecksPerAddress(t *testing.T) {
	c := New(Config{PasswordChecks: 1, PasswordQueue: 16, MaxAuthFailures: 1000})
	release := make(chan struct{})
	var started, blocked atomic.Int32
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &Stream{c: c, Addr: "192.0.2.66"}
			err := s.Login(context.Background(), Credential{ID: fmt.Sprintf("user:spray%d", i), Password: true}, func() (bool, bool) {
				started.Add(1)
				<-release
				return false, true
			})
			var b *BlockedError
			if errors.As(err, &b) {
				blocked.Add(1)
			}
		}()
	}
	for blocked.Load() < 30 {
		time.Sleep(time.Millisecond)
	}
	alice := &Stream{c: c, Addr: "192.0.2.7"}
	done := make(chan error, 1)
	go func() {
		done <- alice.Login(context.Background(), Credential{ID: "user:alice", Password: true}, func() (bool, bool) { return true, false })
	}()
	time.Sleep(50 * time.Millisecond)
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("alice from another address during the spray: %v", err)
	}
	wg.Wait()
	if started.Load() > 2 {
		t.Fatalf("%d of the sprayer's checks ran, want at most 2", started.Load())
	}
}

func TestPreAuthConnectionsGiveWay(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := New(Config{MaxPreAuthConns: 2, MaxConns: 1, HelloTimeout: time.Minute})
	lis := c.Listen(l)
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			accepted <- conn
		}
	}()
	var clients []net.Conn
	defer func() {
		for _, cl := range clients {
			cl.Close()
		}
	}()
	dial := func() net.Conn {
		cl, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, cl)
		return <-accepted
	}
	first := dial()
	if !ConnOf(first.RemoteAddr()).authenticate() {
		t.Fatal("first connection could not authenticate")
	}
	dial()
	dial()
	dial()
	if st := c.Stats(); st.AuthConns != 1 || st.PreAuthConns != 2 {
		t.Fatalf("stats %+v", st)
	}
	// The authenticated connection stays open.
	first.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = first.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("authenticated connection: %v, want a read timeout", err)
	}
}

func TestForwardedAddressOnlyFromTrustedProxies(t *testing.T) {
	proxies, err := ParseTrustedProxies([]string{"10.0.0.0/8, 192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseTrustedProxies([]string{"nginx"}); err == nil {
		t.Fatal("a name was taken for a CIDR")
	}
	c := New(Config{TrustedProxies: proxies})
	tests := []struct {
		peer string
		md   metadata.MD
		want string
	}{
		{"10.1.2.3:5000", metadata.Pairs("x-real-ip", "198.51.100.1"), "198.51.100.1"},
		{"192.0.2.7:5000", metadata.Pairs("x-forwarded-for", "203.0.113.5, 198.51.100.2"), "198.51.100.2"},
		{"10.1.2.3:5000", nil, "10.1.2.3"},
		{"10.1.2.3:5000", metadata.Pairs("x-real-ip", "not an address"), "10.1.2.3"},
		{"192.0.2.8:5000", metadata.Pairs("x-real-ip", "198.51.100.1"), "192.0.2.8"},
	}
	for _, tt := range tests {
		ap, _ := net.ResolveTCPAddr("tcp", tt.peer)
		ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: ap})
		ctx = metadata.NewIncomingContext(ctx, tt.md)
		s, err := c.Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.Addr != tt.want {
			t.Errorf("peer %s, headers %v: address %s, want %s", tt.peer, tt.md, s.Addr, tt.want)
		}
		s.Done()
	}
}

// An agent opening many streams at once with its token is not held back
// by its own attempts in flight, and wrong secrets sent with its token id
// (no secret) from its address do not lock it out.
func TestLimiterLetsConcurrentTokenLoginsThrough(t *testing.T) {
	c := New(Config{MaxAuthFailures: 3})
	s := &Stream{c: c, Addr: "192.0.2.9"}
	release := make(chan struct{})
	var started atomic.Int32
	errs := make(chan error, 64)
	for range 64 {
		go func() {
			errs <- s.Login(context.Background(), Credential{ID: "token:abc", Unguessable: true}, func() (bool, bool) {
				started.Add(1)
				<-release
				return true, false
			})
		}()
	}
	for started.Load() < 64 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	for range 64 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent login with a valid token: %v", err)
		}
	}
	for range 10 {
		s.Login(context.Background(), Credential{ID: "token:abc", Unguessable: true}, func() (bool, bool) { return false, true })
	}
	if err := s.Login(context.Background(), Credential{ID: "token:abc", Unguessable: true}, func() (bool, bool) { return true, false }); err != nil {
		t.Fatalf("the right token after 10 wrong secrets with its id: %v, want it let through", err)
	}
}
