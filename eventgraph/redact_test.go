package eventgraph

import (
	"bytes"
	"encoding/json"
	"testing"
)

// vecFamilyVersions maps the algorithm names used in
// derived_not_normative.json to every room version of that family.
var vecFamilyVersions = map[string][]RoomVersionID{
	"v1 (rooms v1-v5)":    {"1", "2", "3", "4", "5"},
	"v6 (rooms v6-v7)":    {"6", "7"},
	"v8 (room v8)":        {"8"},
	"v9 (rooms v9-v10)":   {"9", "10"},
	"v11 (rooms v11-v12)": {"11", "12"},
}

func TestRedactionVectors(t *testing.T) {
	var v struct {
		Redaction []struct {
			Input    json.RawMessage            `json:"input"`
			Expected map[string]json.RawMessage `json:"expected_by_algorithm"`
		} `json:"redaction"`
	}
	vecLoad(t, "derived_not_normative.json", &v)
	if len(v.Redaction) != 8 {
		t.Fatalf("want 8 samples, got %d", len(v.Redaction))
	}
	covered := map[RoomVersionID]int{}
	for i, c := range v.Redaction {
		var typ struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(c.Input, &typ); err != nil {
			t.Fatal(err)
		}
		if len(c.Expected) != len(vecFamilyVersions) {
			t.Fatalf("sample %d: %d families", i, len(c.Expected))
		}
		for family, want := range c.Expected {
			ids, ok := vecFamilyVersions[family]
			if !ok {
				t.Fatalf("unknown family %q", family)
			}
			for _, id := range ids {
				rv := MustRoomVersion(id)
				got, err := Redact(c.Input, rv)
				if err != nil {
					t.Errorf("%s v%s: %v", typ.Type, id, err)
					continue
				}
				if w := egCanon(t, want); !bytes.Equal(got, w) {
					t.Errorf("%s v%s:\n got  %s\n want %s", typ.Type, id, got, w)
				}
				covered[id]++
			}
		}
	}
	for _, rv := range egVersions() {
		if covered[rv.ID] != 8 {
			t.Errorf("v%s covered by %d samples", rv.ID, covered[rv.ID])
		}
	}
}

// Adding MSC2870 to a room version is one flag.
func TestRedactServerACLProtected(t *testing.T) {
	acl := []byte(`{"type":"m.room.server_acl","state_key":"","sender":"@u:d","room_id":"!r:d","content":{"allow":["*"],"deny":["evil"],"allow_ip_literals":false,"x":1}}`)
	rv := *MustRoomVersion("11")
	got, err := Redact(acl, &rv)
	if err != nil || !bytes.Contains(got, []byte(`"content":{}`)) {
		t.Fatalf("unprotected: %s, %v", got, err)
	}
	rv.ServerACLProtected = true
	got, err = Redact(acl, &rv)
	if err != nil || !bytes.Contains(got, []byte(`"content":{"allow":["*"],"allow_ip_literals":false,"deny":["evil"]}`)) {
		t.Fatalf("protected: %s, %v", got, err)
	}
	for _, v := range egVersions() {
		if v.ServerACLProtected {
			t.Errorf("v%s protects server ACLs, but no stable version adopts MSC2870", v.ID)
		}
	}
}

func TestRedactEdgeCases(t *testing.T) {
	v11 := MustRoomVersion("11")
	v1 := MustRoomVersion("1")
	cases := []struct {
		name string
		rv   *RoomVersion
		in   string
		want string
	}{
		{"missing content becomes {}", v11, `{"type":"m.room.message","sender":"@u:d"}`, `{"content":{},"sender":"@u:d","type":"m.room.message"}`},
		{"non-object content becomes {}", v11, `{"type":"x","content":[1]}`, `{"content":{},"type":"x"}`},
		{"missing type strips all content", v11, `{"content":{"membership":"join"}}`, `{"content":{}}`},
		{"third_party_invite without signed dropped", v11, `{"type":"m.room.member","content":{"membership":"invite","third_party_invite":{"display_name":"x"}}}`, `{"content":{"membership":"invite"},"type":"m.room.member"}`},
		{"third_party_invite not an object dropped", v11, `{"type":"m.room.member","content":{"membership":"invite","third_party_invite":"signed"}}`, `{"content":{"membership":"invite"},"type":"m.room.member"}`},
		{"third_party_invite pre-v11 dropped", v1, `{"type":"m.room.member","content":{"membership":"invite","third_party_invite":{"signed":{}}}}`, `{"content":{"membership":"invite"},"type":"m.room.member"}`},
		{"nested values kept whole", v1, `{"type":"m.room.power_levels","content":{"users":{"@a:b":100},"events":{"x":1},"other":2}}`, `{"content":{"events":{"x":1},"users":{"@a:b":100}},"type":"m.room.power_levels"}`},
		{"keys after content kept in order", v1, `{"type":"x","unsigned":{"a":1},"signatures":{},"origin":"d","membership":"join","prev_state":[]}`, `{"content":{},"membership":"join","origin":"d","prev_state":[],"signatures":{},"type":"x"}`},
		{"escaped key is canonicalised before matching", v1, `{"type":"m.room.member","content":{"member\u0073hip":"join"}}`, `{"content":{"membership":"join"},"type":"m.room.member"}`},
		{"look-alike key with escape dropped", v1, `{"type":"m.room.member","content":{"membership\u0000":"join"}}`, `{"content":{},"type":"m.room.member"}`},
	}
	for _, c := range cases {
		got, err := Redact([]byte(c.in), c.rv)
		if err != nil || string(got) != c.want {
			t.Errorf("%s:\n got  %s, %v\n want %s", c.name, got, err, c.want)
		}
	}
	if _, err := Redact([]byte(`[1]`), v11); err == nil {
		t.Error("array redacted")
	}
	if _, err := Redact([]byte(`{"a":1.5}`), v11); err == nil {
		t.Error("float accepted under v11")
	}
}

// Redaction is idempotent and keeps the reference hash (and so the event
// ID), which is what lets a redacted copy stand in for the event.
func TestRedactPreservesIdentity(t *testing.T) {
	for _, rv := range egVersions() {
		p := egProto(rv, "@u:a.example")
		p.Type, p.StateKey = "m.room.member", egStr("@u:a.example")
		p.Content = json.RawMessage(`{"membership":"join","displayname":"U","avatar_url":"mxc://a/b"}`)
		e, err := BuildEvent(p, rv, "a.example", "ed25519:1", egSeededKey(1), WithRandom(bytes.NewReader(make([]byte, 32))))
		if err != nil {
			t.Fatal(err)
		}
		once, err := Redact(e.JSON(), rv)
		if err != nil {
			t.Fatal(err)
		}
		twice, err := Redact(once, rv)
		if err != nil || !bytes.Equal(once, twice) {
			t.Errorf("v%s: not idempotent:\n%s\n%s", rv.ID, once, twice)
		}
		id, err := ComputeEventID(once, rv)
		if err != nil || id != e.EventID() {
			t.Errorf("v%s: redacted event ID %s, want %s (%v)", rv.ID, id, e.EventID(), err)
		}
		red, err := e.Redact(json.RawMessage(`{"type":"m.room.redaction","redacts":"x"}`))
		if err != nil {
			t.Fatal(err)
		}
		if !red.Redacted() || e.Redacted() {
			t.Errorf("v%s: Redacted() = %v / original %v", rv.ID, red.Redacted(), e.Redacted())
		}
		if red.EventID() != e.EventID() {
			t.Errorf("v%s: Redact changed the event ID", rv.ID)
		}
		if m, _ := red.Membership(); m != "join" {
			t.Errorf("v%s: membership lost in redaction: %q", rv.ID, m)
		}
		if h, _ := red.ReferenceHash(); func() bool { h2, _ := e.ReferenceHash(); return h != h2 }() {
			t.Errorf("v%s: reference hash changed", rv.ID)
		}
	}
}
