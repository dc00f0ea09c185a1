// Command testsummary reads `go test -json` on stdin and prints what plain
// `go test` prints (each package's ok/FAIL line, and the whole output of
// failing tests), then every skipped test with its reason, then the
// packages' result lines again, so that the closing lines are go test's.
// With -log FILE it also writes the verbose output of every test there.
// It exits 1 if any test or package failed.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string
	Test       string
	Output     string
}

type key struct{ pkg, test string }

func main() {
	logPath := flag.String("log", "", "write the verbose output of every test to this file")
	flag.Parse()
	if err := run(os.Stdin, os.Stdout, *logPath); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer, logPath string) error {
	var log io.Writer = io.Discard
	if logPath != "" {
		f, err := os.Create(logPath)
		if err != nil {
			return fmt.Errorf("create the test log: %w", err)
		}
		defer f.Close()
		log = f
	}
	buf := map[key][]string{}
	var skipped, results []string
	failed := false
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// Not an event (go test wrote it directly): pass it on.
			fmt.Fprintf(out, "%s\n", line)
			continue
		}
		k := key{e.Package, e.Test}
		switch e.Action {
		case "output", "build-output":
			io.WriteString(log, e.Output)
			if e.Test == "" {
				if isResult(e.Output) {
					results = append(results, e.Output)
				}
				if e.Output != "PASS\n" {
					io.WriteString(out, e.Output)
				}
				continue
			}
			buf[k] = append(buf[k], e.Output)
		case "fail":
			failed = true
			for _, s := range buf[k] {
				io.WriteString(out, s)
			}
			delete(buf, k)
			if e.Test == "" {
				// The package failed: print what its unfinished tests
				// said (a timeout or a panic ends them without a verdict).
				for bk, lines := range buf {
					if bk.pkg == e.Package {
						for _, s := range lines {
							io.WriteString(out, s)
						}
						delete(buf, bk)
					}
				}
			}
		case "skip":
			if e.Test != "" {
				skipped = append(skipped, fmt.Sprintf("%s %s: %s", e.Package, e.Test, skipReason(buf[k])))
			}
			delete(buf, k)
		case "pass":
			delete(buf, k)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read go test's output: %w", err)
	}
	if len(skipped) > 0 {
		fmt.Fprintf(out, "\n%d skipped tests (TAPSTREAM_TEST_STRICT=1 makes these failures):\n", len(skipped))
		for _, s := range skipped {
			fmt.Fprintf(out, "  SKIP %s\n", s)
		}
	} else {
		fmt.Fprintln(out, "\nno test skipped")
	}
	fmt.Fprintln(out)
	for _, r := range results {
		io.WriteString(out, r)
	}
	if failed {
		os.Exit(1)
	}
	return nil
}

// isResult reports whether a package output line is go test's verdict
// on the package.
func isResult(s string) bool {
	return strings.HasPrefix(s, "ok  \t") || strings.HasPrefix(s, "FAIL\t") || strings.HasPrefix(s, "FAIL ")
}

// skipReason is what a skipped test said last before its --- SKIP line.
func skipReason(lines []string) string {
	reason := ""
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- SKIP") {
			continue
		}
		reason = l
	}
	if reason == "" {
		return "(no reason given)"
	}
	return reason
}
