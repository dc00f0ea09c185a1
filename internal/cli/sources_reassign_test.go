package cli

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tapstream/tapstream/internal/store"
)

// token create --sources stores the patterns; sources reassign gives a
// source, by name, to another credential and says what it changed.
func TestTokenScopesAndReassign(t *testing.T) {
	data := t.TempDir()
	code, out := run("token", "create", "--data", data, "--role", "agent", "--name", "fleet", "--sources", "web*,db?")
	if code != ExitOK || !strings.Contains(out, "sources web*,db?") {
		t.Fatalf("token create: %d %q", code, out)
	}
	id := regexp.MustCompile(`created token ([0-9a-f]{12})`).FindStringSubmatch(out)[1]
	if code, out := run("token", "create", "--data", data, "--sources", "[web"); code != ExitUsage {
		t.Fatalf("bad pattern: %d %q", code, out)
	}
	if code, out := run("token", "list", "--data", data); code != ExitOK || !strings.Contains(out, "web*,db?") {
		t.Fatalf("token list: %d %q", code, out)
	}

	st, err := store.Open(filepath.Join(data, "tapstream.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tok, err := st.GetToken(ctx, id)
	if err != nil || strings.Join(tok.Sources, ",") != "web*,db?" {
		t.Fatalf("stored token: %+v %v", tok, err)
	}
	const web1 = "0b8f2b1e-6a55-4c36-9b1a-1f0cf3a0c001"
	if _, err := st.ClaimSource(ctx, web1, "web1", "token:aaaaaaaaaaaa", 0); err != nil {
		t.Fatal(err)
	}
	st.Close()

	for _, bad := range []string{"token:nosuch", "user:nobody", "root", "token:"} {
		if code, out := run("sources", "reassign", "--data", data, "web1", "--to", bad); code != ExitUsage {
			t.Errorf("--to %s: %d %q", bad, code, out)
		}
	}
	if code, out := run("sources", "reassign", "--data", data, "nosuch", "--to", "token:fleet"); code != ExitUsage {
		t.Errorf("unknown source: %d %q", code, out)
	}
	code, out = run("sources", "reassign", "--data", data, "web1", "--to", "token:fleet")
	if code != ExitOK || !strings.Contains(out, "token:aaaaaaaaaaaa -> token:"+id) {
		t.Fatalf("reassign: %d %q", code, out)
	}
	if code, out := run("sources", "--data", data); code != ExitOK || !strings.Contains(out, "token:"+id) {
		t.Fatalf("sources after reassign: %d %q", code, out)
	}
}
