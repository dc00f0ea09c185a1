// Package cli holds tapstream's command line: one file per subcommand, each
// building its own cobra command. Run maps errors to exit codes: 0 success,
// 1 failure, 2 bad usage (flags, source definitions, filters).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/termsafe"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// EnvPrefix prefixes environment variables that set flags: --batch-delay
// is TAPSTREAM_BATCH_DELAY.
const EnvPrefix = "TAPSTREAM_"

// usageError marks an error as the user's to fix in the command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// globals are the flags every subcommand shares.
type globals struct {
	logLevel  string
	logFormat string
	config    string
	// onCommandLine holds the flags given on the command line itself (not
	// from the environment or a config file), for warnings about secrets.
	onCommandLine map[string]bool
	stdout        io.Writer
	stderr        io.Writer
}

func (g *globals) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(g.stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(g.stderr, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", g.logFormat)
}

// Run runs the tapstream command line with args (without the program name)
// and returns the exit code. ctx ends when the user asks to stop.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "tapstream",
		Short: "Remote full-packet capture: agents stream packets to a collector that writes pcap",
		Long: `tapstream captures full packets on remote hosts and streams them to a central
collector, which stores them as pcap files that Wireshark, tshark, Arkime,
Zeek and Suricata read.

Start a collector (it prints its pin), make a token, point agents at it:

  tapstream collector --data ./tapstream-data
  tapstream token create --data ./tapstream-data --role agent   # save the token in a file, mode 600
  tapstream agent --connect collector:7447 --pin sha256:... --token-file token \
      --source eth0 --filter 'tcp port 443'

Find and cut what was stored:

  tapstream files --data ./tapstream-data --from -1h
  tapstream extract --data ./tapstream-data --source web1-eth0 --from -15m -w - | wireshark -k -i -

Every flag can also be set with an environment variable: TAPSTREAM_ and the
flag's name in capitals with '_' for '-', such as TAPSTREAM_CONNECT, or in a
file given with --config (TAPSTREAM_CONFIG):

  # /etc/tapstream.conf
  [agent]
  connect = capture.example.org:7447
  pin = sha256:...
  source = eth0
  filter = not port 22`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			g.onCommandLine = map[string]bool{}
			cmd.Flags().Visit(func(f *pflag.Flag) { g.onCommandLine[f.Name] = true })
			if err := applyEnv(cmd.Flags()); err != nil {
				return err
			}
			if g.config == "" {
				return nil
			}
			name := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
			return applyConfig(g.config, name, cmd.Flags())
		},
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&g.config, "config", "", "read flags from this file (name = value lines, [command] sections); the command line and environment win")
	root.AddCommand(
		newCollectorCmd(g),
		newAgentCmd(g),
		newInterfacesCmd(g),
		newVersionCmd(g),
		newTokenCmd(g),
		newUserCmd(g),
		newPinCmd(g),
		newFilesCmd(g),
		newSourcesCmd(g),
		newExtractCmd(g),
	)
	root.CompletionOptions.HiddenDefaultCmd = true

	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	printError(stderr, err)
	var ue usageError
	var fe *capture.FilterError
	var ie *capture.UnknownInterfaceError
	switch {
	case errors.As(err, &ue), errors.As(err, &fe), errors.As(err, &ie), isCobraUsage(err):
		return ExitUsage
	}
	return ExitFailure
}

// printError prints err on one line per line of its message (errors.Join
// makes several), each line escaped, so that a name from an agent or a
// file cannot add lines or escape sequences of its own.
func printError(w io.Writer, err error) {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		prefix := "tapstream: "
		if i > 0 {
			prefix = "  "
		}
		fmt.Fprintf(w, "%s%s\n", prefix, termsafe.String(l))
	}
}

// isCobraUsage recognises cobra's own argument errors.
func isCobraUsage(err error) bool {
	msg := err.Error()
	return strings.HasPrefix(msg, "unknown command") || strings.Contains(msg, "accepts ") && strings.Contains(msg, " arg(s)")
}

// applyEnv sets every flag not given on the command line from its
// environment variable, if set.
func applyEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || f.Name == "help" {
			return
		}
		name := EnvPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if sv, isSlice := f.Value.(pflag.SliceValue); isSlice {
			err = sv.Replace(strings.Fields(v))
		} else {
			err = f.Value.Set(v)
		}
		if err != nil {
			err = usagef("%s=%q: %v", name, v, err)
			return
		}
		f.Changed = true
	})
	return err
}
