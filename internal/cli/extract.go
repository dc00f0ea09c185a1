package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/extract"
	"github.com/tapstream/tapstream/internal/pcapfile"
	"github.com/tapstream/tapstream/internal/store"
	"github.com/tapstream/tapstream/internal/termsafe"
)

func newExtractCmd(g *globals) *cobra.Command {
	var data, from, to, filter, out, format string
	var sources []string
	cmd := &cobra.Command{
		Use:   "extract",
		Short: "Cut a time window of stored packets into one pcap or pcapng",
		Long: `Cut a time window out of the stored captures: the catalog picks the files
of the sources asked for, their packets are merged in time order, the
filter (tcpdump syntax) is applied, and the result is written as pcap or
pcapng (from the -w name's extension, or --format). -w - writes to
standard output, for a pipe into Wireshark. Files still being written are
read as far as their packets are stored.

Times are RFC 3339 (2026-11-23T14:05:00Z), a UTC date and time
("2026-11-23 14:05"), relative to now (-15m, -2h, -1d), now, or Unix
seconds; both ends are inclusive.

Exit status: 0 when packets were written, 1 when the window holds none (or
on another failure), 2 for a bad command line or a filter that does not
compile.`,
		Example: `  tapstream extract --data /var/lib/tapstream --source web1-eth0 --from -15m --to now -w web1.pcap
  tapstream extract --data /var/lib/tapstream --source web1-eth0 --from -1h --filter 'tcp port 443' -w - | wireshark -k -i -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("-w OUT is required (OUT.pcap, OUT.pcapng, or - for standard output)")
			}
			if from == "" {
				return usagef("--from is required (RFC 3339, or relative such as -15m)")
			}
			if to == "" {
				to = "now"
			}
			lo, hi, err := timeRange(from, to)
			if err != nil {
				return err
			}
			f := pcapfile.FormatOf(out)
			if format != "" {
				if f, err = pcapfile.ParseFormat(format); err != nil {
					return usagef("--format: %v", err)
				}
			}
			if filter != "" {
				if err := capture.CheckFilter(filter); err != nil {
					return usageError{err}
				}
			}
			srcs, files, err := loadCatalog(cmd.Context(), data, sources, store.FileOpen, store.FileClosed)
			if err != nil {
				return err
			}
			plan := planExtract(srcs, files, data, lo, hi)
			if len(plan) == 0 {
				return fmt.Errorf("no stored packets from %s between %s and %s (see tapstream files)", describe(sources), fmtTime(lo), fmtTime(hi))
			}
			var w io.Writer = g.stdout
			var file *os.File
			if out != "-" {
				if file, err = os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640); err != nil {
					return err
				}
				w = file
			} else if fd, ok := g.stdout.(interface{ Fd() uintptr }); ok && term.IsTerminal(int(fd.Fd())) {
				return usagef("-w - writes binary packets; pipe it (| wireshark -k -i -) or redirect it")
			}
			opts := extract.Options{From: lo, To: hi, Filter: filter, Format: f}
			if fd, ok := g.stderr.(interface{ Fd() uintptr }); ok && term.IsTerminal(int(fd.Fd())) {
				opts.Progress = func(st extract.Stats) {
					fmt.Fprintf(g.stderr, "\rextract: %d packets written, %d read, %d file(s) opened", st.Written, st.Read, st.Files)
				}
			}
			stats, err := extract.Run(cmd.Context(), plan, opts, w)
			if opts.Progress != nil {
				fmt.Fprint(g.stderr, "\r\033[K") // clear the progress line
			}
			for _, m := range stats.Missing {
				fmt.Fprintf(g.stderr, "warning: %s is in the catalog but gone from disk; skipped\n", termsafe.String(m))
			}
			if file != nil {
				if cerr := file.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					os.Remove(out)
				}
			}
			var ferr *capture.FilterError
			switch {
			case errors.As(err, &ferr):
				return usageError{err}
			case errors.Is(err, extract.ErrNoData):
				return fmt.Errorf("no packets from %s between %s and %s matched (read %d in %d files)",
					describe(sources), fmtTime(lo), fmtTime(hi), stats.Read, stats.Files)
			case err != nil:
				return err
			}
			fmt.Fprintf(g.stderr, "extracted %d packets (of %d in the window) from %d source(s) in %d file(s) to %s (%s)\n",
				stats.Written, stats.Read, stats.Sources, stats.Files, termsafe.String(out), f)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&data, "data", defaultDataDir(), "the collector's data directory")
	fl.StringArrayVar(&sources, "source", nil, "source to extract, by name or UUID (repeatable; default all)")
	fl.StringVar(&from, "from", "", "start of the window (inclusive)")
	fl.StringVar(&to, "to", "now", "end of the window (inclusive)")
	fl.StringVar(&filter, "filter", "", "keep only packets matching this tcpdump-syntax filter")
	fl.StringVarP(&out, "write", "w", "", "output file, or - for standard output")
	fl.StringVar(&format, "format", "", "pcap or pcapng (default: by -w's extension; pcap for -)")
	return cmd
}

// planExtract lists each selected source's files that overlap the window,
// in time order, as far as their packets are committed.
func planExtract(srcs map[string]store.Source, files []store.File, data string, lo, hi int64) []extract.Source {
	bySrc := map[string]*extract.Source{}
	for _, f := range files {
		src, ok := srcs[f.SourceUUID]
		if !ok || !overlaps(f, lo, hi) {
			continue
		}
		e := bySrc[f.SourceUUID]
		if e == nil {
			e = &extract.Source{Name: src.Name, UUID: src.UUID}
			bySrc[f.SourceUUID] = e
		}
		e.Files = append(e.Files, extract.File{Path: filepath.Join(data, f.Path), Limit: f.Size})
	}
	out := make([]extract.Source, 0, len(bySrc))
	for _, e := range bySrc {
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func describe(sources []string) string {
	if len(sources) == 0 {
		return "any source"
	}
	return strings.Join(termsafe.Strings(slices.Clone(sources)), ", ")
}
