package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

func openTestStore(t *testing.T) *Store {
	t.Helper()
	st, err := Open(filepath.Join(t.TempDir(), "tapstream.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestClaimSource(t *testing.T) {
	st := openTestStore(t)
	ctx := context.Background()
	const a, b = "token:aaaa", "token:bbbb"
	if claimed, err := st.ClaimSource(ctx, "u1", "web1", a, 0); err != nil || !claimed {
		t.Fatalf("first claim: %v %v", claimed, err)
	}
	if claimed, err := st.ClaimSource(ctx, "u1", "web1", a, 0); err != nil || claimed {
		t.Fatalf("owner again: %v %v", claimed, err)
	}
	var owned *OwnedError
	if _, err := st.ClaimSource(ctx, "u1", "web1", b, 0); !errors.As(err, &owned) || owned.Owner != a || owned.ByName {
		t.Fatalf("other credential by UUID: %v", err)
	}
	if _, err := st.ClaimSource(ctx, "u2", "web1", b, 0); !errors.As(err, &owned) || owned.Owner != a || !owned.ByName || owned.UUID != "u1" {
		t.Fatalf("other credential by name: %v", err)
	}
	// A source recorded before ownership has no owner: the next claim
	// takes it.
	if _, err := st.StartCapture(ctx, "legacy", "old", "h", "c"); err != nil {
		t.Fatal(err)
	}
	if claimed, err := st.ClaimSource(ctx, "legacy", "old", b, 0); err != nil || !claimed {
		t.Fatalf("ownerless source: %v %v", claimed, err)
	}
	// Without credentials nothing is refused and nothing is taken; what
	// was streamed without credentials goes to the first credential.
	if claimed, err := st.ClaimSource(ctx, "u1", "web1", OwnerInsecure, 0); err != nil || claimed {
		t.Fatalf("insecure on an owned source: %v %v", claimed, err)
	}
	if claimed, err := st.ClaimSource(ctx, "trial", "trial", OwnerInsecure, 0); err != nil || !claimed {
		t.Fatalf("insecure, new source: %v %v", claimed, err)
	}
	if _, err := st.ClaimSource(ctx, "trial2", "trial", b, 0); err != nil {
		t.Fatalf("a credential on a name streamed without credentials: %v", err)
	}
	if claimed, err := st.ClaimSource(ctx, "trial", "trial", b, 0); err != nil || !claimed {
		t.Fatalf("a credential on a source streamed without credentials: %v %v", claimed, err)
	}
	changed, err := st.SetSourceOwner(ctx, "web1", b)
	if err != nil || len(changed) != 1 || changed[0].Owner != a {
		t.Fatalf("reassign: %+v %v", changed, err)
	}
	if owner, err := st.SourceOwner(ctx, "u1"); err != nil || owner != b {
		t.Fatalf("owner after reassign: %q %v", owner, err)
	}
	if _, err := st.SetSourceOwner(ctx, "nosuch", b); !errors.Is(err, ErrNotFound) {
		t.Fatalf("reassign unknown: %v", err)
	}
}

// Concurrent claims of new sources never pass the limit.
func TestClaimSourceLimit(t *testing.T) {
	st := openTestStore(t)
	ctx := context.Background()
	const max = 5
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := st.ClaimSource(ctx, fmt.Sprint("u", i), fmt.Sprint("s", i), "user:greedy", max)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	ok, limited := 0, 0
	for err := range errs {
		var le *LimitError
		switch {
		case err == nil:
			ok++
		case errors.As(err, &le):
			limited++
		default:
			t.Fatal(err)
		}
	}
	if ok != max || limited != 50-max {
		t.Fatalf("%d claimed, %d limited; want %d and %d", ok, limited, max, 50-max)
	}
	// The owner's own sources still pass at the limit.
	srcs, err := st.Sources(ctx)
	if err != nil || len(srcs) != max {
		t.Fatalf("sources: %d %v", len(srcs), err)
	}
	if _, err := st.ClaimSource(ctx, srcs[0].UUID, srcs[0].Name, "user:greedy", max); err != nil {
		t.Fatalf("owner's own source at the limit: %v", err)
	}
}
