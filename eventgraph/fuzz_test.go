package eventgraph

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"testing"
)

// Seed corpora live in testdata/fuzz/FuzzCanonicalJSON and
// testdata/fuzz/FuzzParseEvent; run with e.g.
//
//	go test -run x -fuzz FuzzCanonicalJSON ./eventgraph/

func FuzzCanonicalJSON(f *testing.F) {
	f.Add([]byte(`{"b":1,"a":[true,null,"\u00e9"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		strictOut, strictErr := AppendCanonicalJSON(nil, data, true)
		lenientOut, lenientErr := AppendCanonicalJSON(nil, data, false)
		for _, err := range []error{strictErr, lenientErr} {
			var je *JSONError
			if err != nil && (!errors.Is(err, ErrBadJSON) || !errors.As(err, &je) || je.Offset < 0 || je.Offset > len(data)) {
				t.Fatalf("unclassified or misplaced error: %v", err)
			}
		}
		if strictErr == nil {
			// Strict is a subset of lenient with the same output.
			if lenientErr != nil || !bytes.Equal(strictOut, lenientOut) {
				t.Fatalf("strict %q but lenient %q, %v", strictOut, lenientOut, lenientErr)
			}
		}
		if lenientErr != nil {
			if strictErr == nil {
				t.Fatal("lenient refused what strict accepted")
			}
			return
		}
		for _, tc := range []struct {
			strict bool
			out    []byte
			err    error
		}{{true, strictOut, strictErr}, {false, lenientOut, lenientErr}} {
			if tc.err != nil {
				continue
			}
			again, err := AppendCanonicalJSON(nil, tc.out, tc.strict)
			if err != nil || !bytes.Equal(again, tc.out) {
				t.Fatalf("strict=%v: output %q is not a fixed point: %q, %v", tc.strict, tc.out, again, err)
			}
		}
		if !json.Valid(data) || !json.Valid(lenientOut) {
			t.Fatalf("accepted JSON that encoding/json refuses: %q → %q", data, lenientOut)
		}
		// Same meaning as encoding/json gives the input (which we accepted,
		// so it has no duplicate keys or invalid UTF-8).
		in, errIn := egFuzzDecode(data)
		out, errOut := egFuzzDecode(lenientOut)
		if errIn != nil || errOut != nil {
			t.Fatalf("decode: %v / %v", errIn, errOut)
		}
		if !egFuzzEqual(in, out) {
			t.Fatalf("meaning changed: %q → %q", data, lenientOut)
		}
	})
}

func egFuzzDecode(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	err := d.Decode(&v)
	return v, err
}

// egFuzzEqual compares decoded JSON, numbers by value: lenient
// canonicalisation rewrites numbers with a fraction or exponent as the
// shortest spelling of the same double.
func egFuzzEqual(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		if x == y || (x == "-0" && y == "0") {
			return true
		}
		fx, ex := strconv.ParseFloat(string(x), 64)
		fy, ey := strconv.ParseFloat(string(y), 64)
		return ex == nil && ey == nil && fx == fy
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if w, ok := y[k]; !ok || !egFuzzEqual(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !egFuzzEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}

func FuzzParseEvent(f *testing.F) {
	f.Add([]byte(egBenchPDU), byte(11))
	versions := egVersions()
	f.Fuzz(func(t *testing.T, data []byte, version byte) {
		rv := versions[int(version)%len(versions)]
		e, err := ParseEvent(data, rv)
		if err != nil {
			if Errcode(err) == "" {
				t.Fatalf("error without a Matrix error code: %v", err)
			}
			return
		}
		// The canonical form parses to the same event.
		again, err := ParseEvent(e.JSON(), rv)
		if err != nil || again.EventID() != e.EventID() || !bytes.Equal(again.JSON(), e.JSON()) {
			t.Fatalf("re-parse: %v", err)
		}
		if id, err := ComputeEventID(e.JSON(), rv); err != nil || id != e.EventID() {
			t.Fatalf("ComputeEventID = %s, %v; want %s", id, err, e.EventID())
		}
		// The redacted event is still a valid event with the same ID.
		red, err := e.Redact(nil)
		if err != nil {
			t.Fatalf("redact: %v", err)
		}
		pr, err := ParseEvent(red.JSON(), rv)
		if err != nil || pr.EventID() != e.EventID() {
			t.Fatalf("redacted event: %v (%s vs %s)", err, pr.EventID(), e.EventID())
		}
		ce, err := e.ToClientEvent()
		if err != nil || !json.Valid(ce) {
			t.Fatalf("client event %q: %v", ce, err)
		}
		// May fail (join_authorised_via_users_server naming no user), never panic.
		_, _ = RequiredSignatures(e)
		if err := VerifyEventSignatures(e, egKeys(nil)); err == nil {
			t.Fatal("verified without keys")
		}
		_ = e.CheckContentHash()
		_, _ = e.Signatures()
		_, _ = e.Membership()
		_ = e.Redacted()
		_ = e.Redacts()
		_ = e.RoomID()
	})
}

func TestPlainWordMatchesPlainByte(t *testing.T) {
	for pos := 0; pos < 8; pos++ {
		for b := 0; b < 256; b++ {
			w := make([]byte, 8)
			for i := range w {
				w[i] = 'a'
			}
			w[pos] = byte(b)
			x := uint64(0)
			for i := 7; i >= 0; i-- {
				x = x<<8 | uint64(w[i])
			}
			if got := plainWord(x); got != plainByte[b] {
				t.Fatalf("byte %#x at %d: plainWord %v, plainByte %v", b, pos, got, plainByte[b])
			}
		}
	}
}
