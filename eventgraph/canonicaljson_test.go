package eventgraph

import (
	"errors"
	"strings"
	"testing"
)

func TestCanonicalJSONSpecVectors(t *testing.T) {
	var v struct {
		Cases []struct {
			Name     string `json:"name"`
			Input    string `json:"input_json_text"`
			Expected string `json:"expected_canonical_json"`
		} `json:"cases"`
	}
	vecLoad(t, "canonical_json.json", &v)
	if len(v.Cases) != 10 {
		t.Fatalf("expected 10 spec cases, got %d", len(v.Cases))
	}
	for _, c := range v.Cases {
		t.Run(c.Name, func(t *testing.T) {
			got, err := CanonicalJSONLenient([]byte(c.Input))
			if err != nil {
				t.Fatalf("lenient: %v", err)
			}
			if string(got) != c.Expected {
				t.Errorf("lenient: got %s, want %s", got, c.Expected)
			}
			strict, err := CanonicalJSON([]byte(c.Input))
			// Only the number example (1e10) is outside the strict grammar.
			if strings.Contains(c.Input, "1e10") {
				if err == nil {
					t.Errorf("strict accepted an exponent: %s", strict)
				}
				return
			}
			if err != nil || string(strict) != c.Expected {
				t.Errorf("strict: got %s, %v; want %s", strict, err, c.Expected)
			}
		})
	}
}

func TestCanonicalJSONCases(t *testing.T) {
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	cases := []struct {
		name, in, want string // want "" means an error is expected
		lenient        string // expected lenient output when it differs ("" = same as want)
	}{
		{name: "whitespace", in: " \t\r\n{ \"a\" : [ 1 , 2 ] } \n", want: `{"a":[1,2]}`},
		{name: "scalar top level", in: `"x"`, want: `"x"`},
		{name: "nested sort", in: `{"b":{"d":1,"c":2},"a":[{"z":1,"y":2}]}`, want: `{"a":[{"y":2,"z":1}],"b":{"c":2,"d":1}}`},
		{name: "sort by code point not UTF-16", in: `{"😀":1,"\uffff":2,"a":3}`, want: "{\"a\":3,\"\uffff\":2,\"😀\":1}"},
		{name: "escaped key sorts by its value", in: `{"A":1,"\n":2}`, want: `{"\n":2,"A":1}`},
		{name: "control escapes", in: `"\u0000\u001F\b\f\n\r\t\u0008"`, want: `"\u0000\u001f\b\f\n\r\t\b"`},
		{name: "unneeded escapes removed", in: `"\/\u0041\u00e9\u2028"`, want: "\"/Aé\u2028\""},
		{name: "DEL literal", in: "\"\x7f\"", want: "\"\x7f\""},
		{name: "quote and backslash", in: `"\"\\\u005c\u0022"`, want: `"\"\\\\\""`},
		{name: "surrogate pair", in: `"\ud83d\ude00"`, want: `"😀"`},
		{name: "lone high surrogate", in: `"\ud83d"`},
		{name: "lone high surrogate then char", in: `"\ud83dxxxxxx"`},
		{name: "lone low surrogate", in: `"\ude00"`},
		{name: "high then high", in: `"\ud83d\ud83d"`},
		{name: "invalid UTF-8", in: "\"\xff\""},
		{name: "UTF-8 encoded surrogate", in: "\"\xed\xa0\x80\""},
		{name: "overlong UTF-8", in: "\"\xc0\xaf\""},
		{name: "raw control char", in: "\"a\nb\""},
		{name: "bad escape", in: `"\x"`},
		{name: "short unicode escape", in: `"\u12"`},
		{name: "duplicate key", in: `{"a":1,"a":2}`},
		{name: "duplicate key after sort", in: `{"b":1,"a":1,"b":2}`},
		{name: "duplicate key via escape", in: `{"a":1,"\u0061":2}`},
		{name: "duplicate nested key", in: `{"x":{"a":1,"a":1}}`},
		{name: "same key in sibling objects", in: `{"x":{"a":1},"y":{"a":1}}`, want: `{"x":{"a":1},"y":{"a":1}}`},
		{name: "depth limit ok", in: deep(MaxJSONDepth), want: deep(MaxJSONDepth)},
		{name: "depth limit exceeded", in: deep(MaxJSONDepth + 1)},
		{name: "trailing data", in: `{} {}`},
		{name: "trailing comma", in: `[1,]`},
		{name: "missing colon", in: `{"a" 1}`},
		{name: "unquoted key", in: `{a:1}`},
		{name: "BOM", in: "\ufeff{}"},
		{name: "empty input", in: ""},
		{name: "bad literal", in: `tru`},
		{name: "NaN", in: `NaN`},
		{name: "Infinity", in: `-Infinity`},
		{name: "literals", in: `[true,false,null]`, want: `[true,false,null]`},
		{name: "max safe int", in: `[9007199254740991,-9007199254740991]`, want: `[9007199254740991,-9007199254740991]`},
		{name: "2^53", in: `9007199254740992`, lenient: `9007199254740992`},
		{name: "-2^53", in: `-9007199254740992`, lenient: `-9007199254740992`},
		{name: "big int kept exactly", in: `123456789012345678901234567890`, lenient: `123456789012345678901234567890`},
		{name: "int64 max depth", in: `9223372036854775807`, lenient: `9223372036854775807`},
		{name: "negative zero", in: `-0`, want: `0`},
		{name: "leading zero", in: `01`},
		{name: "plus sign", in: `+1`},
		{name: "dot without digits", in: `1.`},
		{name: "leading dot", in: `.5`},
		{name: "exponent without digits", in: `1e`},
		{name: "integral float", in: `1.0`, lenient: `1`},
		{name: "negative zero float", in: `-0.0`, lenient: `0`},
		{name: "exponent", in: `1e10`, lenient: `10000000000`},
		{name: "upper exponent", in: `5.114698E4`, lenient: `51146.98`},
		{name: "fraction", in: `50.57`, lenient: `50.57`},
		{name: "negative fraction", in: `-0.5`, lenient: `-0.5`},
		{name: "small", in: `0.000001`, lenient: `0.000001`},
		{name: "smaller", in: `1e-7`, lenient: `1e-7`},
		{name: "below 1e21", in: `1e20`, lenient: `100000000000000000000`},
		{name: "1e21", in: `1e21`, lenient: `1e+21`},
		{name: "large mantissa", in: `1.5e300`, lenient: `1.5e+300`},
		{name: "overflow", in: `1e400`},
		{name: "underflow to zero", in: `1e-400`, lenient: `0`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := CanonicalJSON([]byte(c.in))
			if c.want == "" {
				if err == nil {
					t.Errorf("strict: accepted %q as %q", c.in, got)
				} else if !errors.Is(err, ErrBadJSON) {
					t.Errorf("strict: error %v does not wrap ErrBadJSON", err)
				}
			} else if err != nil || string(got) != c.want {
				t.Errorf("strict: got %q, %v; want %q", got, err, c.want)
			}
			wantLenient := c.lenient
			if wantLenient == "" {
				wantLenient = c.want
			}
			got, err = CanonicalJSONLenient([]byte(c.in))
			if wantLenient == "" {
				if err == nil {
					t.Errorf("lenient: accepted %q as %q", c.in, got)
				}
			} else if err != nil || string(got) != wantLenient {
				t.Errorf("lenient: got %q, %v; want %q", got, err, wantLenient)
			}
		})
	}
}

func TestCanonicalJSONErrorOffset(t *testing.T) {
	_, err := CanonicalJSON([]byte(`{"a": 1.5}`))
	var je *JSONError
	if !errors.As(err, &je) {
		t.Fatalf("want *JSONError, got %T %v", err, err)
	}
	if je.Offset != 6 {
		t.Errorf("offset %d, want 6 (start of the number)", je.Offset)
	}
	if Errcode(err) != "M_BAD_JSON" {
		t.Errorf("Errcode = %q", Errcode(err))
	}
}

func TestCanonicalJSONForVersion(t *testing.T) {
	in := []byte(`{"pl":50.57}`)
	for _, rv := range egVersions() {
		_, err := CanonicalJSONForVersion(in, rv)
		if rv.StrictCanonicalJSON != (err != nil) {
			t.Errorf("v%s: strict=%v but err=%v", rv.ID, rv.StrictCanonicalJSON, err)
		}
	}
}

func TestAppendCanonicalJSONKeepsPrefix(t *testing.T) {
	out, err := AppendCanonicalJSON([]byte("prefix:"), []byte(`{"b":1,"a":2}`), true)
	if err != nil || string(out) != `prefix:{"a":2,"b":1}` {
		t.Fatalf("got %q, %v", out, err)
	}
	// On error dst comes back unchanged.
	out, err = AppendCanonicalJSON([]byte("prefix:"), []byte(`{"b":1,`), true)
	if err == nil || string(out) != "prefix:" {
		t.Fatalf("got %q, %v", out, err)
	}
}

func TestCanonicalMarshal(t *testing.T) {
	got, err := CanonicalMarshal(map[string]any{"b": "<&>", "a": []int{1, 2}})
	if err != nil || string(got) != `{"a":[1,2],"b":"<&>"}` {
		t.Errorf("got %s, %v", got, err)
	}
	if _, err := CanonicalMarshal(map[string]any{"f": 1.5}); !errors.Is(err, ErrBadJSON) {
		t.Errorf("float accepted: %v", err)
	}
	if _, err := CanonicalMarshal(func() {}); err == nil {
		t.Error("unmarshalable value accepted")
	}
}

// A canonical event is only compared, never reordered: one allocation for
// the output and none for scratch state.
func TestCanonicalJSONAllocations(t *testing.T) {
	in, err := CanonicalJSON([]byte(egBenchPDU))
	if err != nil {
		t.Fatal(err)
	}
	n := testing.AllocsPerRun(100, func() {
		if _, err := CanonicalJSON(in); err != nil {
			t.Fatal(err)
		}
	})
	if n > 1 {
		t.Errorf("%v allocations per canonicalisation of canonical input, want ≤ 1", n)
	}
}

// The spec's legacy power level values are numbers canonical JSON must keep
// (v1–v5) or refuse (v6+); interpreting them is the power-level code's job.
func TestLegacyPowerLevelNumbersCanonicalJSON(t *testing.T) {
	var v struct {
		FloatCases []struct {
			Input    string `json:"input_json_number"`
			Expected int64  `json:"expected"`
		} `json:"float_cases"`
		StringCases []struct {
			Input string `json:"input"`
		} `json:"string_cases"`
		Examples map[string]vecRawJSON `json:"example_events"`
	}
	vecLoad(t, "power_levels_legacy_values.json", &v)
	want := map[string]string{"5.114698E4": "51146.98", "50.57": "50.57", "50": "50"}
	for _, c := range v.FloatCases {
		got, err := CanonicalJSONLenient([]byte(c.Input))
		if err != nil || string(got) != want[c.Input] {
			t.Errorf("lenient %s: got %s, %v; want %s", c.Input, got, err, want[c.Input])
		}
		_, err = CanonicalJSON([]byte(c.Input))
		if isInt := !strings.ContainsAny(c.Input, ".eE"); isInt != (err == nil) {
			t.Errorf("strict %s: err=%v", c.Input, err)
		}
	}
	for _, c := range v.StringCases {
		in := appendCanonicalString(nil, c.Input)
		if got, err := CanonicalJSON(in); err != nil || string(got) != string(in) {
			t.Errorf("string %q: got %s, %v", c.Input, got, err)
		}
	}
	for name, ev := range v.Examples {
		_, errStrict := CanonicalJSON(ev)
		_, errLenient := CanonicalJSONLenient(ev)
		if errLenient != nil {
			t.Errorf("%s: lenient: %v", name, errLenient)
		}
		if floaty := strings.HasPrefix(name, "floaty"); floaty != (errStrict != nil) {
			t.Errorf("%s: strict err=%v", name, errStrict)
		}
	}
}

// vecRawJSON keeps a vector's JSON undecoded.
type vecRawJSON []byte

func (r *vecRawJSON) UnmarshalJSON(b []byte) error {
	*r = append((*r)[:0], b...)
	return nil
}

// The canonical-view helpers only ever see canonical JSON, but must fail
// cleanly (not panic) on anything else.
func TestJSONViewRobustness(t *testing.T) {
	inputs := []string{"", "{", "}", "{}", "[]", "[", `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":1`, `{"a":"\"}`,
		`{"a":"x\\"}`, `[1,]`, `[1`, `["\"]`, `{"a":{"b":[1,{"c":"}"}]}}`, `"abc`, `"\u00`, `"\q"`, `-`, `1.5`}
	for _, in := range inputs {
		b := []byte(in)
		splitObject(b, nil)
		splitArray(b, nil)
		jskipValue(b, 0)
		decodeString(b)
		decodeInt(b)
		jsonKind(b)
		compareKey(b, "k")
	}
	ms, ok := splitObject([]byte(`{"a":{"b":[1,{"c":"}"}]},"d\"e":"x\\"}`), nil)
	if !ok || len(ms) != 2 || string(ms[1].key) != `d\"e` || string(ms[1].val) != `"x\\"` {
		t.Errorf("split: %v %q", ok, ms)
	}
	if s, ok := decodeString([]byte(`"a\"b\\c\n\u0001"`)); !ok || s != "a\"b\\c\n\x01" {
		t.Errorf("decodeString = %q, %v", s, ok)
	}
	if compareKey([]byte(`\n`), "A") >= 0 || compareKey([]byte("b"), "a") <= 0 || compareKey([]byte("a"), "a") != 0 {
		t.Error("compareKey order")
	}
}
