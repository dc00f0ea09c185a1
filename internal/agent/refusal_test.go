package agent

import (
	"errors"
	"strings"
	"testing"

	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// A refusal is reported as a refusal with the collector's message: one that
// retrying cannot fix stops the agent; one that may pass is retried, and is
// never mistaken for an unreachable collector.
func TestRefusalKinds(t *testing.T) {
	for reason, permanent := range map[pb.Refusal_Reason]bool{
		pb.Refusal_REASON_SOURCE_OWNED:        true,
		pb.Refusal_REASON_TOKEN_REVOKED:       true,
		pb.Refusal_REASON_BAD_CREDENTIALS:     true,
		pb.Refusal_REASON_FORBIDDEN_ROLE:      true,
		pb.Refusal_REASON_DUPLICATE_SOURCE:    false,
		pb.Refusal_REASON_RESOURCE_LIMIT:      false,
		pb.Refusal_REASON_SHUTTING_DOWN:       false,
		pb.Refusal_REASON_STORAGE_UNAVAILABLE: false,
	} {
		err := refusalError(&pb.Refusal{Reason: reason, Message: "because the collector says so"})
		var perm *PermanentError
		var refused *RefusedError
		switch {
		case permanent && !errors.As(err, &perm):
			t.Errorf("%v: %T, want a permanent refusal", reason, err)
		case !permanent && !errors.As(err, &refused):
			t.Errorf("%v: %T, want a refusal that is retried", reason, err)
		}
		if !strings.Contains(err.Error(), "collector refused the source ("+reason.String()+"): because the collector says so") {
			t.Errorf("%v: %q does not carry the collector's message", reason, err)
		}
	}
}
