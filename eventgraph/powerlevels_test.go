package eventgraph

import (
	"encoding/json"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
)

type plLegacyVectors struct {
	StringCases []struct {
		Input    string `json:"input"`
		Expected int64  `json:"expected"`
	} `json:"string_cases"`
	FloatCases []struct {
		Input    string `json:"input_json_number"`
		Expected int64  `json:"expected"`
	} `json:"float_cases"`
	ExampleEvents struct {
		Stringy        json.RawMessage  `json:"stringy_valid_in_v1_to_v9"`
		Floaty         json.RawMessage  `json:"floaty_valid_in_v1_to_v5"`
		EffectiveUsers map[string]int64 `json:"effective_users_in_floaty_example"`
	} `json:"example_events"`
}

// TestPowerLevelsLegacyVectors runs testdata/vectors/power_levels_legacy_values.json
// (fragments v1-stringy-power-levels and v1-floaty-power-levels) in every
// room version: strings of integers are levels in v1–v9, floats in v1–v5,
// and neither from v10.
func TestPowerLevelsLegacyVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/vectors/power_levels_legacy_values.json")
	if err != nil {
		t.Fatal(err)
	}
	var vec plLegacyVectors
	if err := json.Unmarshal(raw, &vec); err != nil {
		t.Fatal(err)
	}
	if len(vec.StringCases) == 0 || len(vec.FloatCases) == 0 {
		t.Fatal("vector file has no cases")
	}
	for _, rv := range atVersions(t) {
		allowStrings := rv.LegacyStringPowerLevels
		floats := rv.LegacyStringPowerLevels && !rv.StrictCanonicalJSON
		for _, c := range vec.StringCases {
			quoted, _ := json.Marshal(c.Input)
			n, err := parsePowerValue(quoted, rv)
			if allowStrings && (err != nil || n != c.Expected) {
				t.Errorf("v%s: string %q = %d, %v; want %d", rv.ID, c.Input, n, err, c.Expected)
			}
			if !allowStrings && err == nil {
				t.Errorf("v%s: string %q accepted as %d", rv.ID, c.Input, n)
			}
		}
		for _, c := range vec.FloatCases {
			n, err := parsePowerValue(json.RawMessage(c.Input), rv)
			integer := isJSONInteger(c.Input)
			if (floats || integer) && (err != nil || n != c.Expected) {
				t.Errorf("v%s: number %s = %d, %v; want %d", rv.ID, c.Input, n, err, c.Expected)
			}
			if !floats && !integer && err == nil {
				t.Errorf("v%s: float %s accepted as %d", rv.ID, c.Input, n)
			}
		}

		for name, ex := range map[string]struct {
			raw   json.RawMessage
			valid bool
		}{
			"stringy": {vec.ExampleEvents.Stringy, allowStrings},
			"floaty":  {vec.ExampleEvents.Floaty, floats},
		} {
			var e struct {
				Content json.RawMessage `json:"content"`
			}
			if err := json.Unmarshal(ex.raw, &e); err != nil {
				t.Fatal(err)
			}
			pl, err := ParsePowerLevelsContent(e.Content, rv)
			if ex.valid != (err == nil) {
				t.Errorf("v%s: %s example: err %v, valid %v", rv.ID, name, err, ex.valid)
				continue
			}
			if err != nil {
				continue
			}
			if name == "floaty" {
				for u, want := range vec.ExampleEvents.EffectiveUsers {
					if got := pl.UserLevel(u); got != FinitePowerLevel(want) {
						t.Errorf("v%s: floaty %s = %v, want %d", rv.ID, u, got, want)
					}
				}
			} else if pl.Ban() != 50 || pl.EventLevel(TypePowerLevels, true) != 100 || pl.UserLevel("@example:localhost") != FinitePowerLevel(100) {
				t.Errorf("v%s: stringy example parsed as %+v", rv.ID, pl)
			}
		}
	}
}

// TestPowerLevelsLegacyExampleAuth: the spec's example events as the first
// power levels of a room pass the auth rules exactly where their encoding is
// legal.
func TestPowerLevelsLegacyExampleAuth(t *testing.T) {
	contents := map[string]map[string]any{
		"stringy": {"ban": "50", "events": map[string]any{"m.room.power_levels": "100"}, "events_default": "0",
			"state_default": "50", "users": map[string]any{atAlice: "100"}, "users_default": "0"},
		"floaty": {"ban": 50, "events": map[string]any{"m.room.power_levels": 100}, "events_default": 0,
			"state_default": 50, "users": map[string]any{atAlice: 100, atBob: 50.57}, "users_default": 0},
	}
	for _, rv := range atVersions(t) {
		if rv.PrivilegedCreators {
			continue // alice, the creator, may not be listed
		}
		for name, content := range contents {
			r := newATRoom(t, rv, nil)
			r.member(atAlice, atAlice, MembershipJoin, nil)
			got := r.check(atPLEv(r, atAlice, content))
			var want AuthRule
			switch {
			case name == "stringy" && !rv.LegacyStringPowerLevels:
				want = RulePowerLevelsIntegers
			case name == "floaty" && (!rv.LegacyStringPowerLevels || rv.StrictCanonicalJSON):
				want = RulePowerLevelsUsers
			}
			if got != want {
				t.Errorf("v%s %s: rule %q, want %q", rv.ID, name, got, want)
			}
		}
	}
}

func TestParsePowerValueEdges(t *testing.T) {
	v1, v5, v9, v10 := MustRoomVersion("1"), MustRoomVersion("5"), MustRoomVersion("9"), MustRoomVersion("10")
	cases := []struct {
		rv   *RoomVersion
		in   string
		want int64
		ok   bool
	}{
		{v10, `50`, 50, true},
		{v10, `-0`, 0, true},
		{v10, `-50`, -50, true},
		{v10, `9007199254740991`, 9007199254740991, true},
		{v10, `9007199254740992`, 0, false}, // beyond canonical JSON
		{v10, `1e2`, 0, false},
		{v10, `50.0`, 0, false},
		{v10, `"50"`, 0, false},
		{v10, `null`, 0, false},
		{v10, `true`, 0, false},
		{v10, `{}`, 0, false},
		{v9, `"50"`, 50, true},
		{v9, `"\u0035\u0030"`, 50, true}, // JSON escapes are decoded first
		{v9, `"5 0"`, 0, false},
		{v9, `"++5"`, 0, false},
		{v9, `"+"`, 0, false},
		{v9, `""`, 0, false},
		{v9, `" "`, 0, false},
		{v9, `"0x10"`, 0, false},
		{v9, `"1_000"`, 0, false},
		{v9, `"50.0"`, 0, false},
		{v9, `"\t-7\n"`, -7, true},
		{v9, `"99999999999999999999999"`, math.MaxInt64, true},
		{v9, `"-99999999999999999999999"`, math.MinInt64, true},
		{v9, `50.5`, 0, false}, // v6+: no floats
		{v5, `50.5`, 50, true},
		{v5, `-50.9`, -50, true},
		{v5, `1E2`, 100, true},
		{v5, `1e400`, 0, false}, // outside a double
		{v5, `1e300`, math.MaxInt64, true},
		{v5, `-1e300`, math.MinInt64, true},
		{v1, `123456789012345678901234567890`, math.MaxInt64, true}, // integers of any size before v6
		{v1, `"50.5"`, 0, false},
	}
	for _, c := range cases {
		n, err := parsePowerValue(json.RawMessage(c.in), c.rv)
		if c.ok != (err == nil) || (c.ok && n != c.want) {
			t.Errorf("v%s %s: %d, %v; want %d ok=%v", c.rv.ID, c.in, n, err, c.want, c.ok)
		}
	}
}

func TestPowerLevelsDefaults(t *testing.T) {
	for _, rv := range atVersions(t) {
		r := newATRoom(t, rv, nil)
		none, err := NewPowerLevels(rv, r.create, nil)
		if err != nil {
			t.Fatal(err)
		}
		empty, err := NewPowerLevels(rv, r.create, r.build(atEv{typ: TypePowerLevels, sk: atSK(""), sender: atAlice}))
		if err != nil {
			t.Fatal(err)
		}
		for name, pl := range map[string]*PowerLevels{"no event": none, "empty content": empty} {
			got := []int64{pl.UsersDefault(), pl.EventsDefault(), pl.StateDefault(), pl.Ban(), pl.Kick(), pl.Redact(), pl.Invite(), pl.NotificationLevel("room")}
			want := []int64{0, 0, 50, 50, 50, 50, 0, 50}
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("v%s %s: defaults %v, want %v", rv.ID, name, got, want)
				}
			}
			if pl.EventLevel("m.room.message", false) != 0 || pl.EventLevel("m.room.name", true) != 50 {
				t.Fatalf("v%s %s: event levels", rv.ID, name)
			}
			if pl.UserLevel(atBob) != FinitePowerLevel(0) {
				t.Fatalf("v%s %s: bob %v", rv.ID, name, pl.UserLevel(atBob))
			}
		}
		if none.Exists() || !empty.Exists() {
			t.Fatalf("v%s: Exists", rv.ID)
		}
		creatorNone, creatorEmpty := none.UserLevel(atAlice), empty.UserLevel(atAlice)
		if rv.PrivilegedCreators {
			if !creatorNone.Infinite || !creatorEmpty.Infinite {
				t.Fatalf("v%s: creator %v / %v, want infinite", rv.ID, creatorNone, creatorEmpty)
			}
		} else if creatorNone != FinitePowerLevel(100) || creatorEmpty != FinitePowerLevel(0) {
			t.Fatalf("v%s: creator %v without event (want 100), %v with an empty one (want users_default 0)", rv.ID, creatorNone, creatorEmpty)
		}
	}
}

func TestPowerLevelsAccessors(t *testing.T) {
	rv := MustRoomVersion("11")
	pl, err := ParsePowerLevelsContent(json.RawMessage(`{"users":{"@a:x":70},"users_default":5,"events_default":1,"state_default":2,
		"ban":3,"kick":4,"redact":6,"invite":7,"events":{"m.room.name":8},"notifications":{"room":9,"x":10}}`), rv)
	if err != nil {
		t.Fatal(err)
	}
	if pl.UserLevel("@a:x") != FinitePowerLevel(70) || pl.UserLevel("@b:x") != FinitePowerLevel(5) {
		t.Fatal("user levels")
	}
	got := []int64{pl.EventsDefault(), pl.StateDefault(), pl.Ban(), pl.Kick(), pl.Redact(), pl.Invite(),
		pl.EventLevel("m.room.name", true), pl.EventLevel("m.room.name", false), pl.EventLevel("m.x", false), pl.EventLevel("m.x", true),
		pl.NotificationLevel("room"), pl.NotificationLevel("x"), pl.NotificationLevel("y")}
	want := []int64{1, 2, 3, 4, 6, 7, 8, 8, 1, 2, 9, 10, 50}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("accessors %v, want %v", got, want)
		}
	}
	users := pl.Users()
	users["@a:x"] = 0
	if pl.UserLevel("@a:x") != FinitePowerLevel(70) || len(pl.Events()) != 1 || len(pl.Notifications()) != 2 {
		t.Fatal("copies")
	}
}

func TestPowerLevelCompare(t *testing.T) {
	inf, fifty, max := InfinitePowerLevel(), FinitePowerLevel(50), FinitePowerLevel(math.MaxInt64)
	cases := []struct {
		a, b PowerLevel
		want int
	}{
		{inf, inf, 0}, {inf, max, 1}, {max, inf, -1}, {fifty, max, -1}, {fifty, fifty, 0}, {max, fifty, 1},
	}
	for _, c := range cases {
		if got := c.a.Compare(c.b); got != c.want {
			t.Errorf("%v cmp %v = %d", c.a, c.b, got)
		}
	}
	if !inf.AtLeast(math.MaxInt64) || !inf.Exceeds(math.MaxInt64) || fifty.Exceeds(50) || !fifty.AtLeast(50) {
		t.Fatal("AtLeast/Exceeds")
	}
	if inf.String() != "infinite" || fifty.String() != strconv.Itoa(50) {
		t.Fatal("String")
	}
}

func TestSenderPowerLevel(t *testing.T) {
	for _, rv := range atVersions(t) {
		r := newBaseRoom(t, rv, JoinRulePublic)
		cases := map[string]PowerLevel{atMod: FinitePowerLevel(50), atBob: FinitePowerLevel(0), atAlice: FinitePowerLevel(100)}
		if rv.PrivilegedCreators {
			cases[atAlice] = InfinitePowerLevel()
		}
		for sender, want := range cases {
			got, err := SenderPowerLevel(atMessage(r, sender), r.lookup)
			if err != nil || got != want {
				t.Fatalf("v%s %s: %v, %v; want %v", rv.ID, sender, got, err, want)
			}
		}
		// Before any power levels event: the creator's join.
		join := r.events[r.state[StateKey{Type: TypeMember, StateKey: atAlice}]]
		got, err := SenderPowerLevel(join, r.lookup)
		want := FinitePowerLevel(100)
		if rv.PrivilegedCreators {
			want = InfinitePowerLevel()
		}
		if err != nil || got != want {
			t.Fatalf("v%s creator join: %v, %v; want %v", rv.ID, got, err, want)
		}
		if got, err := SenderPowerLevel(r.create, r.lookup); err != nil || got != want {
			t.Fatalf("v%s create: %v, %v; want %v", rv.ID, got, err, want)
		}
	}
}

// TestPowerLevelsUsersKeys: users keys must be user IDs under the historical
// grammar that senders are held to.
func TestPowerLevelsUsersKeys(t *testing.T) {
	rv := MustRoomVersion("10")
	valid := []string{"@a:b", "@alice:example.org", "@a:example.org:8448", "@a:1.2.3.4", "@a:[::1]", "@a:[2001:db8::1]:443",
		"@:example.org", "@Ünïcode:example.org", "@a/b+c=d:x-y.z"}
	invalid := []string{"", "@", "alice:example.org", "@alice", "@alice:", "@alice:exa_mple.org", "@a:b:", "@a:b:123456",
		"@a:[::1", "@a:[::1]x", "@a:[zz]", "@a\u0000b:example.org", "@a:exa mple.org", "@" + strings.Repeat("a", 250) + ":example.org"}
	for _, id := range valid {
		if _, err := ParsePowerLevelsContent(json.RawMessage(`{"users":{"`+id+`":1}}`), rv); err != nil {
			t.Errorf("%q refused: %v", id, err)
		}
	}
	for _, id := range invalid {
		if _, err := ParsePowerLevelsContent(json.RawMessage(`{"users":{"`+id+`":1}}`), rv); err == nil {
			t.Errorf("%q accepted", id)
		}
	}
}
