package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/datadir"
)

func newPinCmd(g *globals) *cobra.Command {
	var data, certFile string
	cmd := &cobra.Command{
		Use:   "pin",
		Short: "Print the pin agents use to trust a collector",
		Long: `Print the collector's pin (sha256:...), from its generated CA in DATA/tls,
or from a certificate file given with --cert.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if certFile == "" {
				if err := trustDataDir(data); err != nil {
					return err
				}
				certFile = filepath.Join(data, "tls", "ca.crt")
			}
			b, err := os.ReadFile(certFile)
			if err != nil {
				return fmt.Errorf("%w (has the collector run with this --data yet?)", err)
			}
			pin, err := auth.PinPEM(b)
			if err != nil {
				return fmt.Errorf("%s: %w", certFile, err)
			}
			fmt.Fprintln(g.stdout, pin)
			return nil
		},
	}
	cmd.Flags().StringVar(&data, "data", defaultDataDir(), "the collector's data directory")
	cmd.Flags().StringVar(&certFile, "cert", "", "a PEM certificate to pin instead")
	return cmd
}

// DefaultDataDirRoot is the collector's data directory when it runs as
// root: a service's state belongs in a fixed place, not in whatever
// directory it was started from.
const DefaultDataDirRoot = "/var/lib/tapstream"

// defaultDataDir is DefaultDataDirRoot for root, else ./tapstream-data.
func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return DefaultDataDirRoot
	}
	return "./tapstream-data"
}

// trustDataDir checks that data exists and that no other user (than the
// one running tapstream, or root) owns or may write it, its keys or its
// database: the commands that act on what they find there (collector,
// token, user, pin) refuse such a directory.
func trustDataDir(data string) error {
	if err := mustBeDir(data); err != nil {
		return err
	}
	return datadir.Check(data)
}

// mustBeDir checks that dir exists, so that commands do not create a data
// directory by mistake.
func mustBeDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data directory %s: %w (start the collector with --data %s once first)", dir, err, dir)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	return nil
}
