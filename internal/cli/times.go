package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// parseTime reads a point in time given on the command line:
//
//	2026-11-23T14:05:00Z, 2026-11-23T14:05:00.5+01:00   RFC 3339
//	2026-11-23T14:05:00, "2026-11-23 14:05", 2026-11-23  UTC unless a zone is given
//	-15m, -2h30m, -1d, -1d6h                            relative to now
//	now
//	1763906700.123456789                                Unix seconds, exact to the ns
func parseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, fmt.Errorf("empty time")
	}
	if s == "now" {
		return now, nil
	}
	if rest, ok := strings.CutPrefix(s, "-"); ok {
		d, err := parseAgo(rest)
		if err != nil || d < 0 {
			return time.Time{}, fmt.Errorf("relative time %q: want a duration before now such as -15m, -2h30m or -1d", s)
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999",
		"2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	if ns, ok := parseEpoch(s); ok {
		return time.Unix(0, ns), nil
	}
	return time.Time{}, fmt.Errorf("time %q: want RFC 3339 (2026-11-23T14:05:00Z), a date and time in UTC (\"2026-11-23 14:05\"), a relative time (-15m, -2h, -1d), now, or Unix seconds", s)
}

// parseAgo reads a Go duration that may start with whole days (1d6h).
func parseAgo(s string) (time.Duration, error) {
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil {
			return 0, err
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	return days + d, nil
}

// parseEpoch reads Unix seconds with up to nine decimals, exactly.
func parseEpoch(s string) (int64, bool) {
	sec, frac, _ := strings.Cut(s, ".")
	if len(frac) > 9 || sec == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(sec, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var f int64
	if frac != "" {
		v, err := strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
		if err != nil {
			return 0, false
		}
		f = v
	}
	return n*1e9 + f, true
}

// timeRange reads --from and --to; empty means unbounded.
func timeRange(from, to string) (int64, int64, error) {
	now := time.Now()
	lo, hi := int64(0), int64(1<<63-1)
	if from != "" {
		t, err := parseTime(from, now)
		if err != nil {
			return 0, 0, usagef("--from: %v", err)
		}
		lo = t.UnixNano()
	}
	if to != "" {
		t, err := parseTime(to, now)
		if err != nil {
			return 0, 0, usagef("--to: %v", err)
		}
		hi = t.UnixNano()
	}
	if hi < lo {
		return 0, 0, usagef("--to is before --from")
	}
	return lo, hi, nil
}
