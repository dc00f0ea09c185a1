package collector

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/store"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// claim checks that who may stream source id under name, and records a
// new (or ownerless) source as who's. A source belongs to the credential
// that created it; its name does too, since sources of one name share a
// directory and extract --source NAME.
func (s *Server) claim(id, name string, who principal) *pb.Refusal {
	if !who.mayName(name) {
		return refusal(pb.Refusal_REASON_SOURCE_OWNED,
			"%s may stream only sources named %s, not %q; use a name that matches, or a token made with tapstream token create --sources",
			who.display, strings.Join(who.sources, ","), name)
	}
	max := s.cfg.MaxSourcesPerOwner
	if s.cfg.TLS == nil || max < 0 {
		max = 0 // no credentials to tell agents apart
	}
	claimed, err := s.store.ClaimSource(context.Background(), id, name, who.owner, max)
	var owned *store.OwnedError
	var limit *store.LimitError
	switch {
	case errors.As(err, &owned):
		s.log.Warn("refused a stream of a source another credential owns", "source", name, "uuid", id,
			"as", who.display, "owner", owned.Owner, "by_name", owned.ByName)
		what := "source " + id + " (" + name + ")"
		if owned.ByName {
			what = "source name " + name
		}
		return refusal(pb.Refusal_REASON_SOURCE_OWNED,
			"%s belongs to %s; only that credential may stream it. Give this source its own name and uuid, or have an admin run: tapstream sources reassign --data DIR %s --to %s",
			what, owned.Owner, name, who.owner)
	case errors.As(err, &limit):
		return refusal(pb.Refusal_REASON_RESOURCE_LIMIT,
			"%s owns %d sources already, the most this collector allows one credential (--max-sources-per-credential); reuse a source's name and uuid, or have an admin free unused ones (tapstream sources reassign SOURCE --to none) or raise the limit",
			who.display, limit.Max)
	case err != nil:
		s.log.Error("state database", "err", err)
		return refusal(pb.Refusal_REASON_STORAGE_UNAVAILABLE, "collector cannot record the source")
	}
	if claimed {
		s.log.Info("source now belongs to its first credential", "source", name, "uuid", id, "owner", who.owner)
	}
	return nil
}

// recheckLoop checks every interval that each live stream's credential is
// still valid and still owns its source, and ends the streams that are
// not: a revoked token, a disabled user or a reassigned source stops
// streaming within an interval, not only at the next connection.
func (s *Server) recheckLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		live := make([]*session, 0, len(s.live))
		for _, sess := range s.live {
			live = append(live, sess)
		}
		s.mu.Unlock()
		creds := map[string]credCheck{} // one check per credential per round
		for _, sess := range live {
			c, seen := creds[sess.who.owner]
			if !seen {
				c = s.recheckCredential(ctx, sess.who)
				creds[sess.who.owner] = c
			}
			ref := c.ref
			if ref == nil {
				ref = s.recheckSource(ctx, sess, c.who)
			}
			if ref != nil && sess.end(ref) {
				s.log.Warn("ending a live stream", "source", sess.name, "uuid", sess.uuid, "as", sess.who.display,
					"peer", sess.remote, "reason", ref.Reason, "err", ref.Message)
			}
		}
	}
}

// credCheck is the outcome of checking a live credential again: a
// refusal, or the principal as it stands now (a token's patterns may have
// changed).
type credCheck struct {
	ref *pb.Refusal
	who principal
}

// recheckCredential checks again that who may stream. A database error is
// logged and lets the stream go on: the check runs again at the next
// round.
func (s *Server) recheckCredential(ctx context.Context, who principal) credCheck {
	kind, key, _ := strings.Cut(who.owner, ":")
	switch kind {
	case "token":
		t, err := s.store.GetToken(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			return credCheck{ref: refusal(pb.Refusal_REASON_TOKEN_REVOKED, "%s was deleted", who.display)}
		}
		if err != nil {
			s.log.Error("state database: cannot check a live stream's token", "err", err)
			return credCheck{who: who}
		}
		who.sources = t.Sources
		return credCheck{ref: tokenValid(t), who: who}
	case "user":
		u, err := s.store.GetUser(ctx, key)
		switch {
		case errors.Is(err, store.ErrNotFound) || err == nil && u.Disabled:
			return credCheck{ref: refusal(pb.Refusal_REASON_BAD_CREDENTIALS, "user %s was disabled or deleted", key)}
		case err != nil:
			s.log.Error("state database: cannot check a live stream's user", "err", err)
		case !auth.Role(u.Role).MayStream():
			return credCheck{ref: refusal(pb.Refusal_REASON_FORBIDDEN_ROLE, "user %s has role %s now; streaming needs role agent", u.Name, u.Role)}
		}
	}
	return credCheck{who: who}
}

// recheckSource returns a refusal when sess's source now belongs to
// another credential, or who's patterns no longer allow its name.
func (s *Server) recheckSource(ctx context.Context, sess *session, who principal) *pb.Refusal {
	if !who.mayName(sess.name) {
		return refusal(pb.Refusal_REASON_SOURCE_OWNED, "%s may no longer stream source %s", who.display, sess.name)
	}
	owner, err := s.store.SourceOwner(ctx, sess.uuid.String())
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			s.log.Error("state database: cannot check a live stream's source", "err", err)
		}
		return nil
	}
	if owner != sess.who.owner {
		// Reassigned, or freed (--to none) for the next credential to
		// claim: the old owner's stream ends either way.
		to := owner
		if to == "" {
			to = "nobody (the next credential to stream it)"
		}
		return refusal(pb.Refusal_REASON_SOURCE_OWNED, "source %s (%s) was reassigned to %s", sess.uuid, sess.name, to)
	}
	return nil
}
