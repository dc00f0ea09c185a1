package bytesize

import "testing"

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want Size
		bad  bool
	}{
		{"0", 0, false},
		{"1500", 1500, false},
		{"100MB", 100e6, false},
		{"64MiB", 64 << 20, false},
		{"64m", 64 << 20, false},
		{"1.5GiB", 3 << 29, false},
		{"2 kb", 2000, false},
		{"10B", 10, false},
		{"", 0, true},
		{"MB", 0, true},
		{"-5MB", 0, true},
		{"12XB", 0, true},
		{"1e30TB", 0, true},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if (err != nil) != tt.bad || got != tt.want {
			t.Errorf("Parse(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

func TestString(t *testing.T) {
	for s, want := range map[Size]string{0: "0", 1000: "1000", 1 << 20: "1MiB", 3 << 30: "3GiB", 1536: "1536"} {
		if got := s.String(); got != want {
			t.Errorf("Size(%d).String() = %q, want %q", int64(s), got, want)
		}
	}
}

func TestHuman(t *testing.T) {
	for in, want := range map[Size]string{0: "0B", 1023: "1023B", 215920: "210.9KiB", 3 << 30: "3.0GiB"} {
		if got := in.Human(); got != want {
			t.Errorf("Size(%d).Human() = %q, want %q", int64(in), got, want)
		}
	}
}
