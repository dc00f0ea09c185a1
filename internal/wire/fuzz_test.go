package wire

import (
	"bytes"
	"testing"
)

// FuzzValidate feeds arbitrary payloads to the decoders a collector runs on
// agent input. They must never panic; whatever Validate accepts must read
// back record by record and pack again to the same bytes.
func FuzzValidate(f *testing.F) {
	b := NewBuilder(4096)
	b.Append(1_700_000_000_000_000_000, []byte("seed packet"), 60)
	b.Append(1_700_000_000_000_000_500, nil, 0)
	f.Add(append([]byte(nil), b.Bytes()...), 65535)
	f.Add([]byte{}, 0)
	f.Add(make([]byte, RecordHeaderLen), 1)
	f.Add(b.Bytes()[:20], MaxSnaplen)
	f.Fuzz(func(t *testing.T, payload []byte, snaplen int) {
		sum, err := Validate(payload, snaplen)
		r := NewReader(payload)
		var rec Record
		n := 0
		var rerr error
		for {
			ok, err := r.Next(&rec)
			if err != nil {
				rerr = err
				break
			}
			if !ok {
				break
			}
			n++
		}
		if err != nil {
			return
		}
		if rerr != nil {
			t.Fatalf("Validate accepted what Reader rejects: %v", rerr)
		}
		if n != sum.Packets {
			t.Fatalf("Reader saw %d records, Validate %d", n, sum.Packets)
		}
		again := NewBuilder(len(payload))
		r.Reset(payload)
		for {
			ok, _ := r.Next(&rec)
			if !ok {
				break
			}
			if !again.Append(rec.Timestamp, rec.Data, rec.OrigLen) {
				t.Fatal("repacking overflowed")
			}
		}
		if !bytes.Equal(again.Bytes(), payload) {
			t.Fatal("repacked payload differs")
		}
	})
}
