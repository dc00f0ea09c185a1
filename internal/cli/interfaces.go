package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/termsafe"
)

func newInterfacesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "interfaces",
		Short: "List the interfaces this host can capture on",
		Long: `List the interfaces this host can capture on, numbered, with their
addresses, flags and (where the system has one) a friendly description.
Use a name from the list in an agent's --source.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ifs, err := capture.Interfaces()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "#\tNAME\tDESCRIPTION\tADDRESSES\tFLAGS")
			for i, ifc := range ifs {
				desc := termsafe.String(ifc.Description)
				if desc == "" {
					desc = "-"
				}
				addrs := strings.Join(termsafe.Strings(ifc.Addresses), ",")
				if addrs == "" {
					addrs = "-"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", i+1, termsafe.String(ifc.Name), desc, addrs, strings.Join(termsafe.Strings(ifc.Flags), ","))
			}
			return tw.Flush()
		},
	}
}
