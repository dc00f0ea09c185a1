package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tapstream/tapstream/internal/store"
)

func newSourcesReassignCmd(g *globals) *cobra.Command {
	var data, to string
	cmd := &cobra.Command{
		Use:   "reassign SOURCE --to OWNER",
		Short: "Give a source to another credential",
		Long: `A source belongs to the credential that first streamed it; others are
refused. reassign gives the source (by UUID, or every source of that name)
to another credential:

  token:ID or token:NAME   an API token (tapstream token list)
  user:NAME                a user (tapstream user list)
  cert:SUBJECT             a client certificate's subject, as the collector logs it
  insecure                 agents of a collector run with --insecure
  none                     nobody: the next credential that streams it owns it

A live stream of the source from its old owner ends within seconds.`,
		Example: `  tapstream sources reassign --data /var/lib/tapstream web1 --to token:3f2a9c01b7e4
  tapstream sources reassign --data /var/lib/tapstream web1 --to user:sensor`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return usagef("--to is required: token:ID, user:NAME, cert:SUBJECT, insecure or none")
			}
			// Changing who owns a source trusts the data directory as
			// token and user changes do.
			if err := trustDataDir(data); err != nil {
				return err
			}
			st, err := openCatalog(data)
			if err != nil {
				return err
			}
			defer st.Close()
			owner, err := resolveOwner(cmd.Context(), st, to)
			if err != nil {
				return err
			}
			changed, err := st.SetSourceOwner(cmd.Context(), args[0], owner)
			if errors.Is(err, store.ErrNotFound) {
				return usagef("no source with name or UUID %q (see tapstream sources)", args[0])
			}
			if err != nil {
				return err
			}
			shown := owner
			if shown == "" {
				shown = "nobody (the next credential to stream it)"
			}
			for _, src := range changed {
				from := src.Owner
				if from == "" {
					from = "nobody"
				}
				fmt.Fprintf(g.stdout, "source %s (%s): %s -> %s\n", src.Name, src.UUID, from, shown)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&data, "data", defaultDataDir(), "the collector's data directory")
	cmd.Flags().StringVar(&to, "to", "", "the new owner: token:ID, token:NAME, user:NAME, cert:SUBJECT, insecure or none")
	return cmd
}

// resolveOwner checks a --to value and returns the owner key to store.
func resolveOwner(ctx context.Context, st *store.Store, to string) (string, error) {
	switch to {
	case "none":
		return "", nil
	case "insecure":
		return "insecure", nil
	}
	kind, key, _ := strings.Cut(to, ":")
	if key == "" {
		return "", usagef("--to %q: want token:ID, user:NAME, cert:SUBJECT, insecure or none", to)
	}
	switch kind {
	case "token":
		toks, err := st.Tokens(ctx)
		if err != nil {
			return "", err
		}
		var ids []string
		for _, t := range toks {
			if t.ID == key || t.Name == key {
				ids = append(ids, t.ID)
			}
		}
		switch len(ids) {
		case 0:
			return "", usagef("--to %s: no token with that id or name (see tapstream token list)", to)
		case 1:
			return "token:" + ids[0], nil
		}
		return "", usagef("--to %s: %d tokens have that name; give the id (%s)", to, len(ids), strings.Join(ids, ", "))
	case "user":
		if _, err := st.GetUser(ctx, key); errors.Is(err, store.ErrNotFound) {
			return "", usagef("--to %s: no such user (see tapstream user list)", to)
		} else if err != nil {
			return "", err
		}
		return to, nil
	case "cert":
		return to, nil
	}
	return "", usagef("--to %q: want token:ID, user:NAME, cert:SUBJECT, insecure or none", to)
}
