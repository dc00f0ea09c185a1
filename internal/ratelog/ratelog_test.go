package ratelog

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestSuppressesRepeats(t *testing.T) {
	var buf bytes.Buffer
	h := New(slog.NewTextHandler(&buf, nil), 50*time.Millisecond, 3)
	log := slog.New(h).With("peer", "x")
	for i := range 10000 {
		log.Warn("stream ended before Hello", "i", i)
	}
	log.Info("another message")
	if got := strings.Count(buf.String(), "stream ended before Hello"); got != 3 {
		t.Fatalf("%d lines of the flood passed, want 3:\n%s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "another message") {
		t.Fatal("another message was held back")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), "lines=9997") {
		if time.Now().After(deadline) {
			t.Fatalf("no summary:\n%s", buf.String())
		}
		time.Sleep(10 * time.Millisecond)
		h.Flush(context.Background())
	}
	t.Logf("%d bytes for 10000 records", buf.Len())
}
