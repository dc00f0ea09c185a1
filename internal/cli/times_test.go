package cli

import (
	"testing"
	"time"
)

func TestParseTime(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
	}{
		{"now", now},
		{"-15m", now.Add(-15 * time.Minute)},
		{"-2h30m", now.Add(-150 * time.Minute)},
		{"-1d", now.Add(-24 * time.Hour)},
		{"-1d6h", now.Add(-30 * time.Hour)},
		{"2026-11-23T10:05:00Z", time.Date(2026, 11, 23, 10, 5, 0, 0, time.UTC)},
		{"2026-11-23T10:05:00.000000007+01:00", time.Date(2026, 11, 23, 9, 5, 0, 7, time.UTC)},
		{"2026-11-23 10:05", time.Date(2026, 11, 23, 10, 5, 0, 0, time.UTC)},
		{"2026-11-23", time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)},
		{"1763906700.000000123", time.Unix(1763906700, 123)},
		{"1763906700", time.Unix(1763906700, 0)},
	}
	for _, tt := range tests {
		got, err := parseTime(tt.in, now)
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("parseTime(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "-", "-15x", "yesterday", "2026-13-01", "1.0000000001"} {
		if _, err := parseTime(bad, now); err == nil {
			t.Errorf("parseTime(%q) accepted", bad)
		}
	}
}
