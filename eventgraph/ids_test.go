package eventgraph

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestIdentifierVectors(t *testing.T) {
	var v struct {
		ServerNames struct {
			Values []string `json:"values"`
		} `json:"server_names_valid"`
		RoomVersions struct {
			Values []string `json:"values"`
		} `json:"room_versions_valid_grammar"`
		Localparts struct {
			Cases []struct {
				Input        string `json:"input"`
				Expected     string `json:"expected"`
				CasePreserve string `json:"expected_case_preserving_bridge"`
			} `json:"cases"`
		} `json:"localpart_mapping_examples"`
		URIs struct {
			MatrixScheme []struct {
				Target string `json:"target"`
			} `json:"matrix_scheme"`
			MatrixTo []struct {
				Target string `json:"target"`
			} `json:"matrix_to"`
		} `json:"matrix_uri_examples"`
		PropertyPaths struct {
			Cases []struct{} `json:"cases"`
		} `json:"dot_separated_property_paths"`
		EventIDs struct {
			Values map[string]string `json:"values"`
		} `json:"event_id_format_examples"`
	}
	vecLoad(t, "identifiers.json", &v)

	t.Run("server names", func(t *testing.T) {
		if len(v.ServerNames.Values) != 6 {
			t.Fatalf("%d server names", len(v.ServerNames.Values))
		}
		for _, s := range v.ServerNames.Values {
			if err := ValidateServerName(s); err != nil {
				t.Errorf("%s: %v", s, err)
			}
			// Every valid server name works as the domain of every ID kind.
			for _, id := range []string{"@u:" + s, "#a:" + s, "!r:" + s} {
				if err := egValidateAnyID(id); err != nil {
					t.Errorf("%s: %v", id, err)
				}
			}
		}
		host, port, err := ParseServerName("[1234:5678::abcd]:5678")
		if err != nil || host != "[1234:5678::abcd]" || port != 5678 {
			t.Errorf("ParseServerName: %q %d %v", host, port, err)
		}
	})
	t.Run("room versions", func(t *testing.T) {
		for _, s := range v.RoomVersions.Values {
			if err := ValidateRoomVersionID(s); err != nil {
				t.Errorf("%s: %v", s, err)
			}
		}
		for _, id := range SupportedRoomVersions() {
			if err := ValidateRoomVersionID(string(id)); err != nil {
				t.Errorf("supported %s: %v", id, err)
			}
		}
	})
	t.Run("localpart mapping", func(t *testing.T) {
		if len(v.Localparts.Cases) != 4 {
			t.Fatalf("%d cases", len(v.Localparts.Cases))
		}
		for _, c := range v.Localparts.Cases {
			if c.Expected != "" {
				if got := MapToLocalpart(c.Input, false); got != c.Expected {
					t.Errorf("%q → %q, want %q", c.Input, got, c.Expected)
				}
			}
			if c.CasePreserve != "" {
				if got := MapToLocalpart(c.Input, true); got != c.CasePreserve {
					t.Errorf("case-preserving %q → %q, want %q", c.Input, got, c.CasePreserve)
				}
			}
		}
	})
	t.Run("URI targets", func(t *testing.T) {
		// The URI examples name users, rooms and aliases in backticks; the
		// URI syntax itself belongs to the client-facing code, but the
		// identifiers must be valid. "$event" there is a placeholder with no
		// valid form in any room version, so event IDs are skipped.
		re := regexp.MustCompile("`([@!#][^`]+)`")
		n := 0
		for _, tgt := range append(v.URIs.MatrixScheme, v.URIs.MatrixTo...) {
			for _, m := range re.FindAllStringSubmatch(tgt.Target, -1) {
				if err := egValidateAnyID(m[1]); err != nil {
					t.Errorf("%s: %v", m[1], err)
				}
				n++
			}
		}
		if n < 12 {
			t.Errorf("only %d identifiers checked", n)
		}
	})
	t.Run("event ID formats", func(t *testing.T) {
		ex := v.EventIDs.Values
		for _, tc := range []struct {
			key      string
			versions []RoomVersionID
		}{
			{"v1", []RoomVersionID{"1", "2"}},
			{"v3", []RoomVersionID{"3"}},
			{"v4+", []RoomVersionID{"4", "5", "6", "7", "8", "9", "10", "11", "12"}},
		} {
			for _, rv := range egVersions() {
				want := false
				for _, id := range tc.versions {
					want = want || rv.ID == id
				}
				if err := ValidateEventID(ex[tc.key], rv); (err == nil) != want {
					t.Errorf("%s example %s under v%s: %v", tc.key, ex[tc.key], rv.ID, err)
				}
			}
		}
		room := ex["v12 room id"]
		if err := ValidateRoomIDForVersion(room, MustRoomVersion("12")); err != nil {
			t.Errorf("v12 room ID: %v", err)
		}
		if err := ValidateRoomIDForVersion(room, MustRoomVersion("11")); err == nil {
			t.Error("v12 room ID accepted for v11")
		}
		if err := ValidateRoomID(room); err != nil {
			t.Errorf("ValidateRoomID(v12 form): %v", err)
		}
	})
	// Dot-separated property paths are push-rule syntax, outside this
	// package; the section is only checked to be present.
	if len(v.PropertyPaths.Cases) != 3 {
		t.Errorf("property path section changed: %d cases", len(v.PropertyPaths.Cases))
	}
}

func egValidateAnyID(id string) error {
	switch id[0] {
	case '@':
		return ValidateUserID(id)
	case '!':
		return ValidateRoomID(id)
	case '#':
		return ValidateRoomAlias(id)
	}
	return errors.New("unknown sigil")
}

func TestServerNameGrammar(t *testing.T) {
	valid := []string{
		"localhost", "a", "example.com.", "x-y.example", "EXAMPLE.org", "1.2.3", "01.002.3.4", "255.255.255.255",
		"matrix.org:1", "matrix.org:65535", "[::1]", "[::ffff:1.2.3.4]:8448", "[2001:DB8::1]", strings.Repeat("a", 255),
	}
	invalid := []string{
		"", ":80", "matrix.org:", "matrix.org:0x1", "matrix.org:123456", "matrix.org:65536", "a:b:c",
		"exa_mple.com", "ex ample.com", "é.example", "1.2.3.256", "1.2.3.1000", "[1234", "[]", "[::1",
		"[zz::1]", "[::1%eth0]", "[1.2.3.4]", "[::1]x", "[::1]:", "::1", strings.Repeat("a", 256),
	}
	for _, s := range valid {
		if err := ValidateServerName(s); err != nil {
			t.Errorf("%q rejected: %v", s, err)
		}
	}
	for _, s := range invalid {
		if err := ValidateServerName(s); err == nil {
			t.Errorf("%q accepted", s)
		} else if !errors.Is(err, ErrInvalidParam) {
			t.Errorf("%q: %v is not ErrInvalidParam", s, err)
		}
	}
}

func TestUserIDGrammar(t *testing.T) {
	for _, tc := range []struct {
		id                 string
		historical, strict bool
	}{
		{"@alice:example.org", true, true},
		{"@a.b_c=d-e/f+g:example.org:8448", true, true},
		{"@Alice:example.org", true, false},
		{"@alice smith:example.org", true, false},
		{"@:example.org", true, false},
		{"@ünïcode:example.org", true, false},
		{"@\u0001ctrl:example.org", true, false},
		{"@a\x00b:example.org", false, false},
		{"@a\xffb:example.org", false, false},
		{"@alice", false, false},
		{"alice:example.org", false, false},
		{"@alice:", false, false},
		{"@alice:bad_domain", false, false},
		{"@" + strings.Repeat("a", 242) + ":example.org", true, true},   // 255 bytes
		{"@" + strings.Repeat("a", 243) + ":example.org", false, false}, // 256 bytes
	} {
		if err := ValidateUserID(tc.id); (err == nil) != tc.historical {
			t.Errorf("ValidateUserID(%q) = %v", tc.id, err)
		}
		if err := ValidateUserIDStrict(tc.id); (err == nil) != tc.strict {
			t.Errorf("ValidateUserIDStrict(%q) = %v", tc.id, err)
		}
	}
	if err := ValidateUserID("@" + strings.Repeat("a", 300) + ":x"); !errors.Is(err, ErrTooLarge) {
		t.Errorf("long user ID: %v", err)
	}
	if d, err := IDDomain("@a:b.example:8448"); err != nil || d != "b.example:8448" {
		t.Errorf("IDDomain = %q, %v", d, err)
	}
	if _, err := IDDomain("$abc"); err == nil {
		t.Error("IDDomain of a hash ID")
	}
	if err := ValidateLocalpartStrict(""); err == nil {
		t.Error("empty localpart accepted")
	}
}

func TestRoomAndEventIDGrammar(t *testing.T) {
	v1, v3, v4, v11, v12 := MustRoomVersion("1"), MustRoomVersion("3"), MustRoomVersion("4"), MustRoomVersion("11"), MustRoomVersion("12")
	hashURL := "$" + EncodeBase64URL([]byte("0123456789abcdef0123456789abcdef"))
	hashStd := "$" + EncodeBase64([]byte{0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0xfb, 0xff})
	for _, tc := range []struct {
		id   string
		rv   *RoomVersion
		want bool
	}{
		{"$abc:example.org", v1, true},
		{"$:example.org", v1, true},
		{"$abc", v1, false},
		{"$abc:bad domain", v1, false},
		{"abc:example.org", v1, false},
		{hashURL, v4, true},
		{hashURL, v12, true},
		{hashStd, v3, true},
		{hashStd, v4, false},
		{strings.NewReplacer("-", "+", "_", "/").Replace(hashURL), v3, true},
		{hashURL[:43], v4, false},
		{hashURL + "A", v4, false},
		{hashURL[:43] + "B", v4, false}, // non-zero padding bits: not a 32-byte hash
		{hashURL, v1, false},
		{"$abc:example.org", v4, false},
	} {
		if err := ValidateEventID(tc.id, tc.rv); (err == nil) != tc.want {
			t.Errorf("ValidateEventID(%q, v%s) = %v", tc.id, tc.rv.ID, err)
		}
	}
	roomHash := "!" + hashURL[1:]
	for _, tc := range []struct {
		id       string
		rv       *RoomVersion
		want     bool
		anyValid bool
	}{
		{"!abc:example.org", v11, true, true},
		{"!:example.org", v11, true, true},
		{"!abc", v11, false, false},
		{"!abc:example.org", v12, false, true},
		{roomHash, v12, true, true},
		{roomHash, v11, false, true},
		{"!" + hashStd[1:], v12, false, false},
		{"#abc:example.org", v11, false, false},
	} {
		if err := ValidateRoomIDForVersion(tc.id, tc.rv); (err == nil) != tc.want {
			t.Errorf("ValidateRoomIDForVersion(%q, v%s) = %v", tc.id, tc.rv.ID, err)
		}
		if err := ValidateRoomID(tc.id); (err == nil) != tc.anyValid {
			t.Errorf("ValidateRoomID(%q) = %v", tc.id, err)
		}
	}
	for _, tc := range []struct {
		alias string
		want  bool
	}{
		{"#room:example.org", true},
		{"#ünïcode room:example.org", true},
		{"#room", false},
		{"#ro:om:example.org", false}, // the domain "om:example.org" is no server name
		{"!room:example.org", false},
		{"#" + strings.Repeat("a", 250) + ":b.c", true}, // 255 bytes
		{"#" + strings.Repeat("a", 251) + ":b.c", false},
	} {
		if err := ValidateRoomAlias(tc.alias); (err == nil) != tc.want {
			t.Errorf("ValidateRoomAlias(%q) = %v", tc.alias, err)
		}
	}
	for _, bad := range []string{"", "A", "1_2", strings.Repeat("1", 33)} {
		if err := ValidateRoomVersionID(bad); err == nil {
			t.Errorf("room version %q accepted", bad)
		}
	}
}

func TestMapToLocalpart(t *testing.T) {
	for _, tc := range []struct {
		in, plain, preserving string
	}{
		{"Alice_B", "alice_b", "_alice___b"},
		{"a=b", "a=3db", "a=3db"},
		{"x y:z", "x=20y=3az", "x=20y=3az"},
		{"ok.-/+9", "ok.-/+9", "ok.-/+9"},
	} {
		if got := MapToLocalpart(tc.in, false); got != tc.plain {
			t.Errorf("%q → %q, want %q", tc.in, got, tc.plain)
		}
		got := MapToLocalpart(tc.in, true)
		if got != tc.preserving {
			t.Errorf("preserving %q → %q, want %q", tc.in, got, tc.preserving)
		}
		if err := ValidateLocalpartStrict(got); err != nil {
			t.Errorf("mapped %q is not a strict localpart: %v", got, err)
		}
	}
}
