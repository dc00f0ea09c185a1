package cli

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/source"
	"github.com/tapstream/tapstream/internal/store"
	"github.com/tapstream/tapstream/internal/termsafe"
)

func newUserCmd(g *globals) *cobra.Command {
	var data string
	cmd := &cobra.Command{
		Use:   "user",
		Short: "Add, list and disable users (user name and password logins)",
	}
	cmd.PersistentFlags().StringVar(&data, "data", defaultDataDir(), "the collector's data directory")

	var role string
	var passwordStdin bool
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a user; the password is asked for, or read from stdin with --password-stdin",
		Example: `  tapstream user add --data /var/lib/tapstream --role agent sensor1
  printf '%s\n' "$PW" | tapstream user add --data /var/lib/tapstream --password-stdin sensor2`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := auth.ParseRole(role)
			if err != nil {
				return usageError{err}
			}
			name, err := source.SanitizeName(args[0])
			if err != nil || name != args[0] {
				return usagef("user name %q: use letters, digits, '.', '_' and '-'", args[0])
			}
			pw, err := readPassword(passwordStdin)
			if err != nil {
				return err
			}
			hash, err := auth.HashPassword(pw)
			if err != nil {
				return usageError{err}
			}
			st, err := openStore(data)
			if err != nil {
				return err
			}
			defer st.Close()
			if err := st.AddUser(cmd.Context(), store.User{Name: name, Role: string(r), Hash: hash}); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "added user %s with role %s\n", name, r)
			return nil
		},
	}
	add.Flags().StringVar(&role, "role", "agent", "agent, viewer or admin")
	add.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from the first line of stdin")

	list := &cobra.Command{
		Use:   "list",
		Short: "List users",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := openStore(data)
			if err != nil {
				return err
			}
			defer st.Close()
			users, err := st.Users(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tROLE\tCREATED\tSTATE")
			for _, u := range users {
				state := "active"
				if u.Disabled {
					state = "disabled"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", termsafe.String(u.Name), termsafe.String(u.Role), day(u.CreatedAt), state)
			}
			return tw.Flush()
		},
	}
	disable := &cobra.Command{
		Use:   "disable NAME",
		Short: "Disable a user; agents using it are refused from their next connection",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openStore(data)
			if err != nil {
				return err
			}
			defer st.Close()
			ok, err := st.DisableUser(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("no active user %s", strconv.Quote(args[0]))
			}
			fmt.Fprintf(g.stdout, "disabled user %s\n", termsafe.String(args[0]))
			return nil
		},
	}
	cmd.AddCommand(add, list, disable)
	return cmd
}

// readPassword asks twice on a terminal, or reads one line from stdin.
func readPassword(fromStdin bool) (string, error) {
	fd := int(os.Stdin.Fd())
	if fromStdin || !term.IsTerminal(fd) {
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && line == "" {
			return "", errors.New("no password on stdin")
		}
		return strings.TrimRight(line, "\r\n"), nil
	}
	fmt.Fprint(os.Stderr, "password: ")
	a, err := term.ReadPassword(fd)
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return "", err
	}
	fmt.Fprint(os.Stderr, "again: ")
	b, err := term.ReadPassword(fd)
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return "", err
	}
	if string(a) != string(b) {
		return "", errors.New("the passwords differ")
	}
	return string(a), nil
}
