package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

type rec struct {
	ts      int64
	data    []byte
	origLen int
}

func pack(t testing.TB, capacity int, recs []rec) *Builder {
	t.Helper()
	b := NewBuilder(capacity)
	for i, r := range recs {
		if !b.Append(r.ts, r.data, r.origLen) {
			t.Fatalf("record %d did not fit", i)
		}
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		recs []rec
	}{
		{"empty", nil},
		{"one", []rec{{1_700_000_000_123_456_789, []byte("hello"), 5}}},
		{"truncated", []rec{{1_700_000_000_000_000_001, []byte{1, 2, 3}, 1500}}},
		{"zero length", []rec{{5, nil, 0}}},
		{"several", []rec{
			{1e18, bytes.Repeat([]byte{0xaa}, 60), 60},
			{1e18 + 999_999_999, bytes.Repeat([]byte{0xbb}, 1514), 1514},
			{1e18 + 1e9, []byte{0}, 9000},
		}},
		{"max snaplen", []rec{{42, make([]byte, MaxSnaplen), MaxSnaplen}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := pack(t, 1<<20, tt.recs)
			if b.Packets() != len(tt.recs) {
				t.Fatalf("Packets() = %d, want %d", b.Packets(), len(tt.recs))
			}
			sum, err := Validate(b.Bytes(), MaxSnaplen)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if sum.Packets != len(tt.recs) {
				t.Errorf("Validate packets = %d, want %d", sum.Packets, len(tt.recs))
			}
			if len(tt.recs) > 0 && (sum.First != tt.recs[0].ts || sum.Last != tt.recs[len(tt.recs)-1].ts) {
				t.Errorf("first/last = %d/%d, want %d/%d", sum.First, sum.Last, tt.recs[0].ts, tt.recs[len(tt.recs)-1].ts)
			}
			if sum.First != b.First() || sum.Last != b.Last() || sum.CapturedBytes != b.CapturedBytes() {
				t.Errorf("summary %+v disagrees with builder (%d, %d, %d)", sum, b.First(), b.Last(), b.CapturedBytes())
			}
			r := NewReader(b.Bytes())
			var got Record
			for i, want := range tt.recs {
				ok, err := r.Next(&got)
				if !ok || err != nil {
					t.Fatalf("record %d: ok=%v err=%v", i, ok, err)
				}
				if got.Timestamp != want.ts || got.OrigLen != max(want.origLen, len(want.data)) || !bytes.Equal(got.Data, want.data) {
					t.Errorf("record %d = {%d %d %d bytes}, want {%d %d %d bytes}", i,
						got.Timestamp, got.OrigLen, len(got.Data), want.ts, want.origLen, len(want.data))
				}
			}
			if ok, err := r.Next(&got); ok || err != nil {
				t.Errorf("after last record: ok=%v err=%v", ok, err)
			}
		})
	}
}

// The payload layout is a little-endian nanosecond pcap record.
func TestPcapLayout(t *testing.T) {
	b := pack(t, 256, []rec{{3*1e9 + 7, []byte{9, 8, 7}, 100}})
	want := make([]byte, 0, 19)
	want = binary.LittleEndian.AppendUint32(want, 3)
	want = binary.LittleEndian.AppendUint32(want, 7)
	want = binary.LittleEndian.AppendUint32(want, 3)
	want = binary.LittleEndian.AppendUint32(want, 100)
	want = append(want, 9, 8, 7)
	if !bytes.Equal(b.Bytes(), want) {
		t.Errorf("payload = % x\nwant      % x", b.Bytes(), want)
	}
}

func TestBuilderFull(t *testing.T) {
	b := NewBuilder(2 * (RecordHeaderLen + 10))
	data := make([]byte, 10)
	for i := range 2 {
		if !b.Append(int64(i), data, 10) {
			t.Fatalf("record %d should fit", i)
		}
	}
	before := append([]byte(nil), b.Bytes()...)
	if b.Fits(1) || b.Append(3, data[:1], 1) {
		t.Fatal("record past capacity was accepted")
	}
	if !bytes.Equal(before, b.Bytes()) || b.Packets() != 2 {
		t.Fatal("refused Append changed the builder")
	}
	next := make([]byte, 0, 100)
	got := b.Take(next)
	if !bytes.Equal(got, before) {
		t.Fatal("Take returned a different payload")
	}
	if b.Len() != 0 || b.Packets() != 0 || b.Cap() != 100 {
		t.Fatalf("after Take: len %d packets %d cap %d", b.Len(), b.Packets(), b.Cap())
	}
}

func TestValidateRejects(t *testing.T) {
	good := pack(t, 256, []rec{{1, []byte("abcd"), 4}}).Bytes()
	mut := func(f func(p []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := []struct {
		name    string
		payload []byte
		snaplen int
	}{
		{"short header", good[:10], MaxSnaplen},
		{"short data", good[:len(good)-1], MaxSnaplen},
		{"trailing bytes", append(append([]byte(nil), good...), 1, 2), MaxSnaplen},
		{"nanoseconds out of range", mut(func(p []byte) []byte { binary.LittleEndian.PutUint32(p[4:], 1e9); return p }), MaxSnaplen},
		{"orig below cap", mut(func(p []byte) []byte { binary.LittleEndian.PutUint32(p[12:], 3); return p }), MaxSnaplen},
		{"over snaplen", good, 3},
		{"huge caplen", mut(func(p []byte) []byte { binary.LittleEndian.PutUint32(p[8:], 0xffffffff); return p }), MaxSnaplen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Validate(tt.payload, tt.snaplen)
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("Validate = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestNoAllocsPerPacket(t *testing.T) {
	data := make([]byte, 64)
	b := NewBuilder(1 << 20)
	for _, n := range []int{1, 100, 10000} {
		allocs := testing.AllocsPerRun(20, func() {
			b.Reset()
			for i := range n {
				b.Append(int64(i), data, 64)
			}
		})
		if allocs != 0 {
			t.Errorf("packing %d packets: %v allocs, want 0", n, allocs)
		}
		payload := b.Bytes()
		allocs = testing.AllocsPerRun(20, func() {
			if _, err := Validate(payload, MaxSnaplen); err != nil {
				t.Fatal(err)
			}
			var r Reader
			r.Reset(payload)
			var rec Record
			for {
				ok, err := r.Next(&rec)
				if !ok || err != nil {
					break
				}
			}
		})
		if allocs != 0 {
			t.Errorf("reading %d packets: %v allocs, want 0", n, allocs)
		}
	}
}

func BenchmarkPack64(b *testing.B)   { benchPack(b, 64) }
func BenchmarkPack1500(b *testing.B) { benchPack(b, 1500) }

func benchPack(b *testing.B, size int) {
	data := make([]byte, size)
	bl := NewBuilder(1 << 20)
	b.ReportAllocs()
	b.SetBytes(int64(size))
	for b.Loop() {
		if !bl.Append(1, data, size) {
			bl.Reset()
			bl.Append(1, data, size)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "packets/s")
}

func BenchmarkValidate64(b *testing.B) {
	data := make([]byte, 64)
	bl := NewBuilder(1 << 20)
	for bl.Append(1, data, 64) {
	}
	payload := bl.Bytes()
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		if _, err := Validate(payload, MaxSnaplen); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*bl.Packets())/b.Elapsed().Seconds(), "packets/s")
}
