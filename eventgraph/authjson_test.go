package eventgraph

import (
	"encoding/json"
	"testing"
)

func TestAuthEachMember(t *testing.T) {
	cases := []struct {
		in   string
		want map[string]string // nil: malformed
	}{
		{`{}`, map[string]string{}},
		{` { } `, map[string]string{}},
		{`{"a":1}`, map[string]string{"a": "1"}},
		{"{\n \"a\" : \"x,}\" ,\t\"b\":{\"c\":[1,{\"d\":\"]\"}]}, \"e\":null}", map[string]string{"a": `"x,}"`, "b": `{"c":[1,{"d":"]"}]}`, "e": "null"}},
		{`{"\u0061\"":true,"k\\":-1.5e3}`, map[string]string{`a"`: "true", `k\`: "-1.5e3"}},
		{`{"a":"\"}"}`, map[string]string{"a": `"\"}"`}},
		{`{"a":1,"a":2}`, map[string]string{"a": "2"}},
		{``, nil}, {`[]`, nil}, {`"x"`, nil}, {`{`, nil}, {`{"a"}`, nil}, {`{"a":}`, nil}, {`{"a":1,}`, nil},
		{`{"a":1 "b":2}`, nil}, {`{"a":1}x`, nil}, {`{"a":[1}`, nil}, {`{a:1}`, nil}, {`{"a":"x}`, nil}, {`{}}`, nil},
	}
	for _, c := range cases {
		got := map[string]string{}
		err := authEachMember([]byte(c.in), func(k, v []byte) bool { got[string(k)] = string(v); return true })
		if c.want == nil {
			if err == nil {
				t.Errorf("%q: accepted as %v", c.in, got)
			}
			continue
		}
		if err != nil || len(got) != len(c.want) {
			t.Errorf("%q: %v, %v; want %v", c.in, got, err, c.want)
			continue
		}
		for k, v := range c.want {
			if got[k] != v {
				t.Errorf("%q: %q = %q, want %q", c.in, k, got[k], v)
			}
		}
	}
}

// FuzzAuthEachMember: for any input encoding/json reads as an object, the
// scanner finds the same members with the same values, and it never accepts
// what encoding/json refuses.
func FuzzAuthEachMember(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1,"b":[{"c":"d"}]}`, `{"membership":"join","x":{"y":"}"}}`, `{"\u00e9":"\ud83d\ude00"}`, ` {"a" : true } `, `[1]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var ref map[string]json.RawMessage
		refErr := json.Unmarshal(in, &ref)
		got := map[string][]byte{}
		err := authEachMember(in, func(k, v []byte) bool { got[string(k)] = v; return true })
		if refErr != nil {
			if err == nil && json.Valid(in) {
				t.Fatalf("accepted %q, which encoding/json reads as no object: %v", in, refErr)
			}
			return
		}
		if ref == nil { // JSON null
			return
		}
		if err != nil {
			t.Fatalf("refused object %q: %v", in, err)
		}
		if len(got) != len(ref) {
			t.Fatalf("%q: %d members, encoding/json %d", in, len(got), len(ref))
		}
		for k, v := range ref {
			if !json.Valid(got[k]) || string(compactJSON(t, got[k])) != string(compactJSON(t, v)) {
				t.Fatalf("%q: member %q = %q, encoding/json %q", in, k, got[k], v)
			}
		}
	})
}

func compactJSON(t *testing.T, b []byte) []byte {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(v)
	return out
}
