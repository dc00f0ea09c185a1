package admission

import (
	"context"
	"sync"
	"time"
)

// Login limiter: failures are counted per credential and address, so one
// client's failures never lock out another credential from the same
// address (every agent behind a proxy shares one). An attempt counts from
// its start, so concurrent guesses cannot outrun the limit. An unguessable
// credential (a token's 192-bit secret, a certificate) is checked in
// microseconds and never blocked: guessing it is hopeless, and blocking
// it would let anyone who knows a token's id (it is no secret) and shares
// the agent's address lock the agent out; nor is an agent opening many
// streams at once held back by its own attempts.
const (
	failureWindow = time.Minute
	failureBlock  = time.Minute
	// limiterEntries bounds the credential-address pairs remembered.
	limiterEntries = 100000
)

// Credential names what a login attempt presents, for the limiter: a
// stable id such as "token:ID" or "user:NAME" (never the secret).
type Credential struct {
	ID string
	// Password says the check runs bcrypt: it waits for one of a few
	// places, so guesses cannot take every core.
	Password bool
	// Unguessable says the secret cannot be guessed and is checked in
	// microseconds (a token, a client certificate): it is checked at once
	// and never blocked.
	Unguessable bool
}

// Login runs check, the credential check, under the limiter. check
// reports whether the credential was accepted, and whether a refusal
// counts as a failed attempt. Login returns a *BlockedError when the
// credential is blocked from this address, or ErrBusy when too many
// password checks are running or waiting.
func (s *Stream) Login(ctx context.Context, cred Credential, check func() (ok, counts bool)) error {
	if cred.Unguessable {
		check()
		return nil
	}
	key := s.Addr + " " + cred.ID
	if err := s.c.limiter.begin(key, s.Addr); err != nil {
		return err
	}
	failed := false
	defer func() {
		if s.c.limiter.end(key, failed) {
			s.c.log.Warn("blocking a credential from an address after repeated failed authentication",
				"addr", s.Addr, "credential", cred.ID, "failures", s.c.cfg.MaxAuthFailures, "block", failureBlock)
		}
	}()
	if cred.Password {
		if !s.c.passwordSlot(s.Addr) {
			return &BlockedError{Addr: s.Addr, Wait: time.Second}
		}
		defer s.c.passwordDone(s.Addr)
		if err := s.c.passwords.acquire(ctx); err != nil {
			return err
		}
		defer s.c.passwords.release()
	}
	ok, counts := check()
	failed = !ok && counts
	return nil
}

// maxPasswordChecksPerAddr bounds the password checks one client address
// has running or waiting at once.
const maxPasswordChecksPerAddr = 2

func (c *Controller) passwordSlot(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.passwordsByAddr[addr] >= maxPasswordChecksPerAddr {
		return false
	}
	c.passwordsByAddr[addr]++
	return true
}

func (c *Controller) passwordDone(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.passwordsByAddr[addr]--; c.passwordsByAddr[addr] <= 0 {
		delete(c.passwordsByAddr, addr)
	}
}

type limiter struct {
	max     int
	mu      sync.Mutex
	entries map[string]*attempts
}

type attempts struct {
	failures     int
	inFlight     int
	windowStart  time.Time
	blockedUntil time.Time
}

// begin starts an attempt of a guessable credential, which counts from
// now on towards the limit, until end.
func (l *limiter) begin(key, addr string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	a := l.entries[key]
	if a == nil {
		if len(l.entries) >= limiterEntries {
			l.prune(now)
		}
		a = &attempts{windowStart: now}
		l.entries[key] = a
	}
	if now.Before(a.blockedUntil) {
		return &BlockedError{Addr: addr, Wait: a.blockedUntil.Sub(now)}
	}
	if now.Sub(a.windowStart) > failureWindow {
		a.windowStart, a.failures = now, 0
	}
	if a.failures+a.inFlight >= l.max {
		// Attempts in flight would reach the limit if they failed:
		// wait for them.
		return &BlockedError{Addr: addr, Wait: time.Second}
	}
	a.inFlight++
	return nil
}

// end finishes an attempt and reports whether it started a block.
func (l *limiter) end(key string, failed bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.entries[key]
	if a == nil {
		return false
	}
	a.inFlight--
	if !failed {
		return false
	}
	now := time.Now()
	if now.Sub(a.windowStart) > failureWindow {
		a.windowStart, a.failures = now, 0
	}
	a.failures++
	if a.failures >= l.max {
		a.blockedUntil = now.Add(failureBlock)
		a.failures = 0
		return true
	}
	return false
}

// prune forgets pairs with nothing to remember; when every pair still
// counts, it forgets some at random (map order) rather than grow.
func (l *limiter) prune(now time.Time) {
	for k, a := range l.entries {
		if a.inFlight == 0 && now.After(a.blockedUntil) && now.Sub(a.windowStart) > failureWindow {
			delete(l.entries, k)
		}
	}
	for k, a := range l.entries {
		if len(l.entries) < limiterEntries*9/10 {
			break
		}
		if a.inFlight == 0 {
			delete(l.entries, k)
		}
	}
}

// semaphore bounds work running at once, with a short bounded queue.
type semaphore struct {
	slots   chan struct{}
	mu      sync.Mutex
	waiting int
	queue   int
	maxWait time.Duration
}

func newSemaphore(n, queue int, maxWait time.Duration) semaphore {
	return semaphore{slots: make(chan struct{}, n), queue: queue, maxWait: maxWait}
}

func (s *semaphore) acquire(ctx context.Context) error {
	select {
	case s.slots <- struct{}{}:
		return nil
	default:
	}
	s.mu.Lock()
	if s.waiting >= s.queue {
		s.mu.Unlock()
		return ErrBusy
	}
	s.waiting++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.waiting--
		s.mu.Unlock()
	}()
	t := time.NewTimer(s.maxWait)
	defer t.Stop()
	select {
	case s.slots <- struct{}{}:
		return nil
	case <-t.C:
		return ErrBusy
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *semaphore) release() { <-s.slots }
