package cli

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/store"
	"github.com/tapstream/tapstream/internal/termsafe"
)

func newTokenCmd(g *globals) *cobra.Command {
	var data string
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke API tokens",
		Long: `API tokens authenticate agents (role agent), and readers of captures and
the dashboard (viewer, admin). Tokens are stored hashed in DATA/tapstream.db;
the token itself is shown once, when it is created.`,
	}
	cmd.PersistentFlags().StringVar(&data, "data", defaultDataDir(), "the collector's data directory")

	var role, name, expires string
	var sources []string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a token and print it",
		Long: `Create a token and print it. The token is the last word of the last line,
so scripts can take it with: tapstream token create ... | tail -1 | awk '{print $NF}'

Sources belong to the token that first streamed them: another token is
refused. --sources limits an agent token further to source names matching
one of its patterns (shell globs: *, ?, [a-z]), such as 'web*,db?'.`,
		Example: `  tapstream token create --data /var/lib/tapstream --role agent --name web1 --expires 90d
  tapstream token create --data /var/lib/tapstream --role agent --name web-fleet --sources 'web*'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := auth.ParseRole(role)
			if err != nil {
				return usageError{err}
			}
			life, err := auth.ParseExpiry(expires)
			if err != nil {
				return usageError{err}
			}
			for _, p := range sources {
				if _, err := path.Match(p, ""); err != nil || p == "" {
					return usagef("--sources %q: not a pattern (use shell globs such as web* or db?)", p)
				}
			}
			st, err := openStore(data)
			if err != nil {
				return err
			}
			defer st.Close()
			tok, id, hash, err := auth.NewToken()
			if err != nil {
				return err
			}
			if name == "" {
				name = string(r) + "-" + id
			}
			t := store.Token{ID: id, Name: name, Role: string(r), Hash: hash, Sources: sources}
			exp := "never"
			if life > 0 {
				t.ExpiresAt = time.Now().Add(life)
				exp = t.ExpiresAt.UTC().Format(time.RFC3339)
			}
			if err := st.AddToken(cmd.Context(), t); err != nil {
				return err
			}
			scope := "any source"
			if len(sources) > 0 {
				scope = "sources " + strings.Join(sources, ",")
			}
			fmt.Fprintf(g.stdout, "created token %s: name %s, role %s, %s, expires %s\n", id, termsafe.String(name), r, termsafe.String(scope), exp)
			fmt.Fprintf(g.stdout, "this is the only time the token is shown:\n%s\n", tok)
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "agent", "agent, viewer or admin")
	create.Flags().StringVar(&name, "name", "", "a name to recognise it by")
	create.Flags().StringVar(&expires, "expires", "", "lifetime, such as 30d or 12h (default: never)")
	create.Flags().StringSliceVar(&sources, "sources", nil, "only source names matching these patterns, comma-separated (default: any)")

	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens (never the tokens themselves)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := openStore(data)
			if err != nil {
				return err
			}
			defer st.Close()
			toks, err := st.Tokens(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tROLE\tSOURCES\tCREATED\tEXPIRES\tSTATE\tLAST USED")
			for _, t := range toks {
				state := "active"
				switch {
				case !t.RevokedAt.IsZero():
					state = "revoked " + day(t.RevokedAt)
				case !t.ExpiresAt.IsZero() && time.Now().After(t.ExpiresAt):
					state = "expired"
				}
				scope := "*"
				if len(t.Sources) > 0 {
					scope = strings.Join(t.Sources, ",")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", termsafe.String(t.ID), termsafe.String(t.Name), termsafe.String(t.Role), termsafe.String(scope), day(t.CreatedAt), orNever(t.ExpiresAt), state, orNever(t.LastUsed))
			}
			return tw.Flush()
		},
	}

	var revokeAll bool
	revoke := &cobra.Command{
		Use:   "revoke ID|NAME",
		Short: "Revoke a token; its live streams end within seconds and it is refused from then on",
		Long: `Revoke a token by its id, or by its name. Names need not be unique:
when several active tokens share the name, nothing is revoked unless
--all says to revoke them all; give an id to revoke one.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openStore(data)
			if err != nil {
				return err
			}
			defer st.Close()
			if !revokeAll {
				toks, err := st.Tokens(cmd.Context())
				if err != nil {
					return err
				}
				var ids []string
				for _, t := range toks {
					if t.Name == args[0] && t.RevokedAt.IsZero() {
						ids = append(ids, t.ID)
					}
				}
				if len(ids) > 1 {
					return usagef("%d active tokens are named %s (%s): give an id, or --all to revoke them all",
						len(ids), termsafe.String(args[0]), strings.Join(ids, ", "))
				}
			}
			n, err := st.RevokeToken(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("no active token with id or name %s (see tapstream token list)", strconv.Quote(args[0]))
			}
			fmt.Fprintf(g.stdout, "revoked %d token(s)\n", n)
			return nil
		},
	}
	revoke.Flags().BoolVar(&revokeAll, "all", false, "revoke every active token with this name")
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func day(t time.Time) string { return t.UTC().Format("2006-01-02 15:04") }

func orNever(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return day(t)
}

// openStore opens the state database of a data directory that exists and
// can be trusted (trustDataDir), to change credentials.
func openStore(data string) (*store.Store, error) {
	if err := trustDataDir(data); err != nil {
		return nil, err
	}
	st, err := store.Open(filepath.Join(data, "tapstream.db"), store.Options{})
	if err != nil {
		return nil, err
	}
	for _, r := range st.Repairs() {
		fmt.Fprintf(os.Stderr, "warning: state database: repaired a value out of range: %s\n", termsafe.String(r))
	}
	return st, nil
}
