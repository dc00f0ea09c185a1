package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/spf13/cobra"

	"github.com/tapstream/tapstream/internal/bytesize"
	"github.com/tapstream/tapstream/internal/store"
	"github.com/tapstream/tapstream/internal/termsafe"
)

// openCatalog opens the state database of a data directory a collector
// has used, to read it: unlike openStore, it does not make an empty one,
// and it does not ask that the running user own the directory, so that
// analysts may read a collector's catalog (what they print is escaped).
func openCatalog(data string) (*store.Store, error) {
	path := filepath.Join(data, "tapstream.db")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, usagef("no catalog at %s: is %s the collector's --data directory?", path, data)
	}
	if err := mustBeDir(data); err != nil {
		return nil, err
	}
	return store.Open(path, store.Options{})
}

// loadCatalog reads the sources asked for (all when none) and the catalog
// entries in the given states (all when none).
func loadCatalog(ctx context.Context, data string, sources []string, states ...store.FileState) (map[string]store.Source, []store.File, error) {
	st, err := openCatalog(data)
	if err != nil {
		return nil, nil, err
	}
	defer st.Close()
	srcs, err := selectSources(ctx, st, sources)
	if err != nil {
		return nil, nil, err
	}
	files, err := st.Files(ctx, states...)
	return srcs, files, err
}

// selectSources resolves --source names or UUIDs; none selects every
// source.
func selectSources(ctx context.Context, st *store.Store, want []string) (map[string]store.Source, error) {
	all, err := st.Sources(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]store.Source{}
	for _, w := range want {
		// A UUID picks that source alone, never one whose name spells it.
		_, isUUID := uuid.Parse(w)
		found := false
		for _, s := range all {
			if s.UUID == w || isUUID != nil && s.Name == w {
				out[s.UUID], found = s, true
			}
		}
		if !found {
			names := make([]string, 0, len(all))
			for _, s := range all {
				names = append(names, termsafe.String(s.Name))
			}
			return nil, usagef("no source %s in the catalog (sources: %s)", strconv.Quote(w), strings.Join(names, ", "))
		}
	}
	if len(want) == 0 {
		for _, s := range all {
			out[s.UUID] = s
		}
	}
	return out, nil
}

// overlaps reports whether f holds packets in [from, to].
func overlaps(f store.File, from, to int64) bool {
	return f.Packets > 0 && f.FirstTS <= to && f.LastTS >= from
}

func fmtTime(ns int64) string {
	if ns == 0 {
		return "-"
	}
	return time.Unix(0, ns).UTC().Format("2006-01-02T15:04:05.000Z")
}

func newFilesCmd(g *globals) *cobra.Command {
	var data, from, to string
	var sources []string
	var all bool
	cmd := &cobra.Command{
		Use:   "files",
		Short: "List the capture files in the catalog",
		Long: `List the capture files the collector recorded in its catalog
(DATA/tapstream.db): source, state, first and last packet time (UTC),
packets, size, the credential whose stream wrote it, and path. States: open (being written), closed (complete),
missing (removed behind the collector's back) and deleted (by retention;
shown with --all). After the files it lists the sources' capture gaps:
stretches lost without being counted because an agent was killed or
crashed, from the last packet stored before to the first after.`,
		Example: `  tapstream files --data /var/lib/tapstream
  tapstream files --data /var/lib/tapstream --source web1-eth0 --from -1h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lo, hi, err := timeRange(from, to)
			if err != nil {
				return err
			}
			srcs, files, err := loadCatalog(cmd.Context(), data, sources)
			if err != nil {
				return err
			}
			slices.SortStableFunc(files, func(a, b store.File) int {
				if c := strings.Compare(srcs[a.SourceUUID].Name, srcs[b.SourceUUID].Name); c != 0 {
					return c
				}
				return int(a.ID - b.ID)
			})
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SOURCE\tSTATE\tFIRST PACKET\tLAST PACKET\tPACKETS\tSIZE\tWRITER\tPATH")
			var n int
			var packets uint64
			var size int64
			for _, f := range files {
				src, ok := srcs[f.SourceUUID]
				if !ok || (!all && f.State == store.FileDeleted) {
					continue
				}
				if (from != "" || to != "") && !overlaps(f, lo, hi) {
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", termsafe.String(src.Name), termsafe.String(string(f.State)), fmtTime(f.FirstTS), fmtTime(f.LastTS),
					f.Packets, bytesize.Size(f.Size).Human(), termsafe.String(orDash(f.Writer)), termsafe.String(f.Path))
				n++
				packets += f.Packets
				size += f.Size
			}
			tw.Flush()
			fmt.Fprintf(g.stderr, "%d file(s), %d packets, %s\n", n, packets, bytesize.Size(size).Human())
			return printGaps(cmd.Context(), g, data, srcs, from != "" || to != "", lo, hi)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&data, "data", defaultDataDir(), "the collector's data directory")
	fl.StringArrayVar(&sources, "source", nil, "only this source, by name or UUID (repeatable)")
	fl.StringVar(&from, "from", "", "only files with packets at or after this time (RFC 3339, -15m, ...)")
	fl.StringVar(&to, "to", "", "only files with packets at or before this time")
	fl.BoolVar(&all, "all", false, "include files deleted by retention")
	return cmd
}

// printGaps lists the capture gaps of the sources in srcs that overlap
// [lo, hi] when window is set: stretches the collector knows it lacks.
func printGaps(ctx context.Context, g *globals, data string, srcs map[string]store.Source, window bool, lo, hi int64) error {
	st, err := openCatalog(data)
	if err != nil {
		return err
	}
	defer st.Close()
	gaps, err := st.Gaps(ctx)
	if err != nil {
		return err
	}
	var shown []store.Gap
	for _, gp := range gaps {
		if _, ok := srcs[gp.SourceUUID]; !ok {
			continue
		}
		end := gp.To
		if end == 0 {
			end = math.MaxInt64
		}
		if window && (end < lo || gp.From > hi) {
			continue
		}
		shown = append(shown, gp)
	}
	if len(shown) == 0 {
		return nil
	}
	fmt.Fprintln(g.stdout)
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tGAP FROM\tGAP TO\tDURATION\tWHY")
	for _, gp := range shown {
		dur := "-"
		if gp.From != 0 && gp.To != 0 {
			dur = time.Duration(gp.To - gp.From).Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", termsafe.String(srcs[gp.SourceUUID].Name), fmtTime(gp.From), fmtTime(gp.To), dur, termsafe.String(gp.Reason))
	}
	tw.Flush()
	fmt.Fprintf(g.stderr, "%d capture gap(s): packets there were lost without being counted (the agent was killed or crashed)\n", len(shown))
	return nil
}

func newSourcesCmd(g *globals) *cobra.Command {
	var data string
	cmd := &cobra.Command{
		Use:   "sources",
		Short: "List the sources the collector knows, with their state and counters",
		Long: `List every source the collector has stored: its state (streaming,
paused while storage is full, disconnected), when it was last seen, and
its totals of packets stored and packets lost (kernel, interface, agent),
its capture gaps: stretches lost without being counted because the agent
was killed or crashed (tapstream files lists them), and the credential that
owns it (tapstream sources reassign changes it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := openCatalog(data)
			if err != nil {
				return err
			}
			defer st.Close()
			srcs, err := st.Sources(cmd.Context())
			if err != nil {
				return err
			}
			gaps, err := st.Gaps(cmd.Context())
			if err != nil {
				return err
			}
			gapCount := map[string]int{}
			for _, gp := range gaps {
				gapCount[gp.SourceUUID]++
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SOURCE\tHOST\tSTATE\tLAST SEEN\tPACKETS\tBYTES\tKERNEL DROPS\tIF DROPS\tAGENT DROPS\tGAPS\tOWNER\tUUID")
			for _, s := range srcs {
				state := s.State
				if s.StateDetail != "" {
					state += " (" + s.StateDetail + ")"
				}
				if !s.EndedUncleanAt.IsZero() {
					state += " (stream broke " + s.EndedUncleanAt.UTC().Format(time.RFC3339) + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", termsafe.String(s.Name), termsafe.String(s.Hostname), termsafe.String(state),
					s.LastSeen.UTC().Format(time.RFC3339), s.Packets, bytesize.Size(s.Bytes).Human(),
					s.KernelDrops, s.InterfaceDrops, s.AgentDrops, gapCount[s.UUID], termsafe.String(orDash(s.Owner)), termsafe.String(s.UUID))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&data, "data", defaultDataDir(), "the collector's data directory")
	cmd.AddCommand(newSourcesReassignCmd(g))
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
