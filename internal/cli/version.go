package cli

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/version"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, protocol version and capture libraries",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(g.stdout, "tapstream %s\n", version.String())
			fmt.Fprintf(g.stdout, "  protocol: v%d\n", int32(pb.ProtocolVersion_PROTOCOL_VERSION_1))
			fmt.Fprintf(g.stdout, "  go:       %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
			fmt.Fprintf(g.stdout, "  capture:  %s (default backend %s)\n", capture.LibraryVersion(), capture.DefaultBackend())
			return nil
		},
	}
}
