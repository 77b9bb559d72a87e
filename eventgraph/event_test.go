package eventgraph

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func egStr(s string) *string { return &s }

// egEventID returns a syntactically valid event ID for rv, distinct per n.
func egEventID(rv *RoomVersion, n int) string {
	switch rv.EventIDs {
	case EventIDFormatV1:
		return fmt.Sprintf("$ev%d:a.example", n)
	case EventIDFormatV3:
		return "$" + EncodeBase64([]byte(fmt.Sprintf("%032d", n))[:32])
	}
	return "$" + EncodeBase64URL([]byte(fmt.Sprintf("%032d", n))[:32])
}

func egRoomID(rv *RoomVersion) string {
	if rv.RoomIDFromCreateEvent {
		return "!" + EncodeBase64URL(bytes.Repeat([]byte{7}, 32))
	}
	return "!room:a.example"
}

// egProto is a valid m.room.message proto event for rv.
func egProto(rv *RoomVersion, sender string) ProtoEvent {
	prev, auth := egEventID(rv, 1), egEventID(rv, 2)
	return ProtoEvent{
		RoomID:          egRoomID(rv),
		Sender:          sender,
		Type:            "m.room.message",
		Content:         json.RawMessage(`{"msgtype":"m.text","body":"hello"}`),
		PrevEvents:      []string{prev},
		AuthEvents:      []string{auth},
		ReferenceHashes: map[string][32]byte{prev: {1}, auth: {2}},
		Depth:           7,
		OriginServerTS:  1700000000000,
	}
}

func egBuild(t testing.TB, rv *RoomVersion, p ProtoEvent) *Event {
	t.Helper()
	e, err := BuildEvent(p, rv, "a.example", "ed25519:1", egSeededKey(1), WithRandom(bytes.NewReader(make([]byte, 32))))
	if err != nil {
		t.Fatalf("v%s: build: %v", rv.ID, err)
	}
	return e
}

func TestBuildAndParseEveryVersion(t *testing.T) {
	for _, rv := range egVersions() {
		t.Run(string(rv.ID), func(t *testing.T) {
			p := egProto(rv, "@alice:a.example")
			e := egBuild(t, rv, p)
			if c, _ := CanonicalJSON(e.JSON()); !bytes.Equal(c, e.JSON()) {
				t.Errorf("built event not canonical: %s", e.JSON())
			}
			if err := e.CheckContentHash(); err != nil {
				t.Errorf("content hash: %v", err)
			}
			if err := VerifyEventSignatures(e, egKeys(nil)); err == nil {
				t.Errorf("verified without keys")
			}
			id, err := ComputeEventID(e.JSON(), rv)
			if err != nil || id != e.EventID() {
				t.Errorf("ComputeEventID = %s, %v; event has %s", id, err, e.EventID())
			}
			if err := ValidateEventID(e.EventID(), rv); err != nil {
				t.Errorf("event ID: %v", err)
			}
			parsed, err := ParseEvent(e.JSON(), rv)
			if err != nil {
				t.Fatalf("parse own event: %v\n%s", err, e.JSON())
			}
			if parsed.EventID() != e.EventID() || !bytes.Equal(parsed.JSON(), e.JSON()) {
				t.Errorf("round trip changed the event")
			}
			// Accessors.
			if e.Sender() != p.Sender || e.Type() != p.Type || e.RoomID() != p.RoomID || e.Depth() != 7 ||
				e.OriginServerTS() != p.OriginServerTS || e.IsState() || e.Version() != rv {
				t.Errorf("accessors disagree with the proto")
			}
			if strings.Join(e.PrevEventIDs(), ",") != p.PrevEvents[0] || strings.Join(e.AuthEventIDs(), ",") != p.AuthEvents[0] {
				t.Errorf("refs: %v %v", e.PrevEventIDs(), e.AuthEventIDs())
			}
			if string(e.Content()) != `{"body":"hello","msgtype":"m.text"}` {
				t.Errorf("content %s", e.Content())
			}
			wantOrigin := "a.example"
			if rv.Redaction >= RedactionV11 {
				wantOrigin = ""
			}
			if e.Origin() != wantOrigin {
				t.Errorf("origin %q, want %q", e.Origin(), wantOrigin)
			}
			sigs, err := e.Signatures()
			if err != nil || len(sigs["a.example"]["ed25519:1"]) != 86 {
				t.Errorf("signatures %v, %v", sigs, err)
			}
			if !bytes.HasPrefix(e.Hashes(), []byte(`{"sha256":"`)) {
				t.Errorf("hashes %s", e.Hashes())
			}
			if rv.EventIDs == EventIDFormatV1 {
				if !strings.HasSuffix(e.EventID(), ":a.example") {
					t.Errorf("v1 event ID %s", e.EventID())
				}
				want := fmt.Sprintf(`"prev_events":[[%q,{"sha256":"%s"}]]`, p.PrevEvents[0], EncodeBase64(append([]byte{1}, make([]byte, 31)...)))
				if !bytes.Contains(e.JSON(), []byte(want)) {
					t.Errorf("v1 prev_events shape: %s", e.JSON())
				}
			} else if bytes.Contains(e.JSON(), []byte(`"event_id"`)) {
				t.Errorf("v3+ event carries event_id: %s", e.JSON())
			}
		})
	}
}

func TestBuildEventVersionShapes(t *testing.T) {
	v10, v11, v12, v1 := MustRoomVersion("10"), MustRoomVersion("11"), MustRoomVersion("12"), MustRoomVersion("1")

	t.Run("redaction before v11 is top-level", func(t *testing.T) {
		p := egProto(v10, "@u:a.example")
		p.Type, p.Redacts, p.Content = "m.room.redaction", egEventID(v10, 9), json.RawMessage(`{"reason":"spam"}`)
		e := egBuild(t, v10, p)
		if e.Redacts() != p.Redacts || !bytes.Contains(e.JSON(), []byte(`"redacts":"`+p.Redacts+`"`)) || bytes.Contains(e.Content(), []byte("redacts")) {
			t.Errorf("v10 redaction: %s", e.JSON())
		}
		ce, err := e.ToClientEvent()
		if err != nil {
			t.Fatal(err)
		}
		var c struct {
			Redacts string `json:"redacts"`
			Content struct {
				Redacts string `json:"redacts"`
				Reason  string `json:"reason"`
			} `json:"content"`
		}
		if err := json.Unmarshal(ce, &c); err != nil || c.Redacts != p.Redacts || c.Content.Redacts != p.Redacts || c.Content.Reason != "spam" {
			t.Errorf("v10 client event: %s", ce)
		}
	})
	t.Run("redaction from v11 is in content", func(t *testing.T) {
		p := egProto(v11, "@u:a.example")
		p.Type, p.Redacts = "m.room.redaction", egEventID(v11, 9)
		p.Content = nil
		e := egBuild(t, v11, p)
		// content.redacts is the one that counts; the top-level copy is for
		// servers that predate v11 (Dendrite 0.13 reads only it).
		if e.Redacts() != p.Redacts || string(e.Content()) != `{"redacts":"`+p.Redacts+`"}` || !bytes.Contains(e.JSON(), []byte(`,"redacts":"`+p.Redacts+`"`)) {
			t.Errorf("v11 redaction: %s", e.JSON())
		}
		ce, _ := e.ToClientEvent()
		if !bytes.Contains(ce, []byte(`"redacts":"`+p.Redacts+`","room_id"`)) {
			t.Errorf("v11 client event lacks top-level redacts: %s", ce)
		}
		p.Content = json.RawMessage(`{"redacts":"$other"}`)
		if _, err := BuildEvent(p, v11, "a.example", "ed25519:1", egSeededKey(1)); err == nil {
			t.Error("conflicting content.redacts accepted")
		}
	})
	t.Run("v12 create derives the room ID", func(t *testing.T) {
		p := egProto(v12, "@u:a.example")
		p.Type, p.StateKey, p.RoomID = "m.room.create", egStr(""), ""
		p.PrevEvents, p.AuthEvents, p.Depth = nil, nil, 1
		p.Content = json.RawMessage(`{"room_version":"12"}`)
		e := egBuild(t, v12, p)
		if want := "!" + e.EventID()[1:]; e.RoomID() != want {
			t.Errorf("room ID %s, want %s", e.RoomID(), want)
		}
		if rid, _ := RoomIDFromCreateEventID(e.EventID()); rid != e.RoomID() {
			t.Errorf("RoomIDFromCreateEventID disagrees")
		}
		if err := ValidateRoomIDForVersion(e.RoomID(), v12); err != nil {
			t.Errorf("derived room ID invalid: %v", err)
		}
		ce, _ := e.ToClientEvent()
		if !bytes.Contains(ce, []byte(`"room_id":"`+e.RoomID()+`"`)) || !bytes.Contains(ce, []byte(`"state_key":""`)) {
			t.Errorf("client event: %s", ce)
		}
		p.RoomID = "!" + EncodeBase64URL(make([]byte, 32))
		if _, err := BuildEvent(p, v12, "a.example", "ed25519:1", egSeededKey(1)); !errors.Is(err, ErrInvalidParam) {
			t.Errorf("v12 create with room_id: %v", err)
		}
	})
	t.Run("v1 needs randomness and reference hashes", func(t *testing.T) {
		p := egProto(v1, "@u:a.example")
		if _, err := BuildEvent(p, v1, "a.example", "ed25519:1", egSeededKey(1)); err == nil {
			t.Error("v1 built without randomness")
		}
		p.ReferenceHashes = nil
		if _, err := BuildEvent(p, v1, "a.example", "ed25519:1", egSeededKey(1), WithRandom(bytes.NewReader(make([]byte, 32)))); err == nil {
			t.Error("v1 built without reference hashes")
		}
		seq := make([]byte, 64)
		for i := range seq {
			seq[i] = byte(i)
		}
		r := bytes.NewReader(seq)
		p = egProto(v1, "@u:a.example")
		a, _ := BuildEvent(p, v1, "a.example", "ed25519:1", egSeededKey(1), WithRandom(r))
		b, _ := BuildEvent(p, v1, "a.example", "ed25519:1", egSeededKey(1), WithRandom(r))
		if a == nil || b == nil || a.EventID() == b.EventID() {
			t.Error("v1 event IDs do not come from the random source")
		}
	})
	t.Run("rejects", func(t *testing.T) {
		for name, mut := range map[string]func(p *ProtoEvent){
			"float content":      func(p *ProtoEvent) { p.Content = json.RawMessage(`{"n":1.5}`) },
			"array content":      func(p *ProtoEvent) { p.Content = json.RawMessage(`[]`) },
			"bad UTF-8 type":     func(p *ProtoEvent) { p.Type = "m.\xff" },
			"bad sender":         func(p *ProtoEvent) { p.Sender = "alice" },
			"missing room":       func(p *ProtoEvent) { p.RoomID = "" },
			"negative depth":     func(p *ProtoEvent) { p.Depth = -1 },
			"huge depth":         func(p *ProtoEvent) { p.Depth = 1 << 53 },
			"long type":          func(p *ProtoEvent) { p.Type = strings.Repeat("t", 256) },
			"redacts on message": func(p *ProtoEvent) { p.Redacts = "$x" },
			"bad prev event":     func(p *ProtoEvent) { p.PrevEvents = []string{"$nope"} },
			"unsigned array":     func(p *ProtoEvent) { p.Unsigned = json.RawMessage(`[]`) },
		} {
			p := egProto(v12, "@u:a.example")
			mut(&p)
			if _, err := BuildEvent(p, v12, "a.example", "ed25519:1", egSeededKey(1)); err == nil {
				t.Errorf("%s: accepted", name)
			}
		}
		if _, err := BuildEvent(egProto(v12, "@u:a.example"), v12, "a.example", "ed25519:1", nil); err == nil {
			t.Error("nil key accepted")
		}
	})
	t.Run("unsigned is carried but not signed", func(t *testing.T) {
		p := egProto(v12, "@u:a.example")
		p.Unsigned = json.RawMessage(`{"age_ts":5}`)
		e := egBuild(t, v12, p)
		p.Unsigned = nil
		if e2 := egBuild(t, v12, p); e2.EventID() != e.EventID() {
			t.Error("unsigned changed the event ID")
		}
		if string(e.Unsigned()) != `{"age_ts":5}` {
			t.Errorf("unsigned %s", e.Unsigned())
		}
	})
}

func TestParseEventRules(t *testing.T) {
	v5, v6, v12, v1 := MustRoomVersion("5"), MustRoomVersion("6"), MustRoomVersion("12"), MustRoomVersion("1")
	base := func(rv *RoomVersion) map[string]any {
		e := egBuild(t, rv, egProto(rv, "@alice:a.example"))
		var m map[string]any
		d := json.NewDecoder(bytes.NewReader(e.JSON()))
		d.UseNumber()
		if err := d.Decode(&m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	encode := func(m map[string]any) []byte {
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name  string
		rv    *RoomVersion
		mut   func(m map[string]any)
		class error // nil: must parse
		field string
	}{
		{"valid", v12, func(m map[string]any) {}, nil, ""},
		{"missing sender", v12, func(m map[string]any) { delete(m, "sender") }, ErrBadJSON, "sender"},
		{"missing hashes", v12, func(m map[string]any) { delete(m, "hashes") }, ErrBadJSON, "hashes"},
		{"hashes without sha256", v12, func(m map[string]any) { m["hashes"] = map[string]any{} }, ErrBadJSON, "hashes"},
		{"missing signatures", v12, func(m map[string]any) { delete(m, "signatures") }, ErrBadJSON, "signatures"},
		{"signatures of non-objects", v12, func(m map[string]any) { m["signatures"] = map[string]any{"a": 1} }, ErrBadJSON, "signatures"},
		{"missing depth", v12, func(m map[string]any) { delete(m, "depth") }, ErrBadJSON, "depth"},
		{"missing prev_events", v12, func(m map[string]any) { delete(m, "prev_events") }, ErrBadJSON, "prev_events"},
		{"missing content", v12, func(m map[string]any) { delete(m, "content") }, ErrBadJSON, "content"},
		{"content not object", v12, func(m map[string]any) { m["content"] = "x" }, ErrBadJSON, "content"},
		{"sender not string", v12, func(m map[string]any) { m["sender"] = 5 }, ErrBadJSON, "sender"},
		{"state_key null", v12, func(m map[string]any) { m["state_key"] = nil }, ErrBadJSON, "state_key"},
		{"type too long", v12, func(m map[string]any) { m["type"] = strings.Repeat("t", 256) }, ErrTooLarge, "type"},
		{"type 255 bytes", v12, func(m map[string]any) { m["type"] = strings.Repeat("t", 255) }, nil, ""},
		{"state_key too long", v12, func(m map[string]any) { m["state_key"] = strings.Repeat("é", 128) }, ErrTooLarge, "state_key"},
		{"sender too long", v12, func(m map[string]any) { m["sender"] = "@" + strings.Repeat("a", 245) + ":a.example" }, ErrTooLarge, "sender"},
		{"sender bad grammar", v12, func(m map[string]any) { m["sender"] = "alice@a.example" }, ErrInvalidParam, "sender"},
		{"sender bad server", v12, func(m map[string]any) { m["sender"] = "@alice:a_example" }, ErrInvalidParam, "sender"},
		{"historical sender accepted", v12, func(m map[string]any) { m["sender"] = "@Alice Smith!:a.example" }, nil, ""},
		{"room_id with domain in v12", v12, func(m map[string]any) { m["room_id"] = "!room:a.example" }, ErrInvalidParam, "room_id"},
		{"hash room_id before v12", v6, func(m map[string]any) { m["room_id"] = egRoomID(v12) }, ErrInvalidParam, "room_id"},
		{"missing room_id", v12, func(m map[string]any) { delete(m, "room_id") }, ErrBadJSON, "room_id"},
		{"create with room_id in v12", v12, func(m map[string]any) { m["type"] = "m.room.create"; m["state_key"] = "" }, ErrInvalidParam, "room_id"},
		{"create without room_id in v12", v12, func(m map[string]any) { m["type"] = "m.room.create"; m["state_key"] = ""; delete(m, "room_id") }, nil, ""},
		{"create without room_id in v6", v6, func(m map[string]any) { m["type"] = "m.room.create"; m["state_key"] = ""; delete(m, "room_id") }, ErrBadJSON, "room_id"},
		{"21 prev_events", v12, func(m map[string]any) { m["prev_events"] = egIDs(v12, 21) }, ErrBadJSON, "prev_events"},
		{"20 prev_events", v12, func(m map[string]any) { m["prev_events"] = egIDs(v12, 20) }, nil, ""},
		{"11 auth_events", v12, func(m map[string]any) { m["auth_events"] = egIDs(v12, 11) }, ErrBadJSON, "auth_events"},
		{"bad prev event ID", v12, func(m map[string]any) { m["prev_events"] = []string{"$abc:a.example"} }, ErrInvalidParam, "prev_events"},
		{"v3 ID in v4 room", MustRoomVersion("4"), func(m map[string]any) { m["auth_events"] = []string{egEventID(MustRoomVersion("3"), 1) + "+"} }, ErrInvalidParam, "auth_events"},
		{"prev_events not array", v12, func(m map[string]any) { m["prev_events"] = "x" }, ErrBadJSON, "prev_events"},
		{"negative depth", v12, func(m map[string]any) { m["depth"] = -1 }, ErrInvalidParam, "depth"},
		{"depth above 2^53-1 in v6", v6, func(m map[string]any) { m["depth"] = json.Number("9007199254740992") }, ErrBadJSON, ""},
		{"depth 2^63-1 in v5", v5, func(m map[string]any) { m["depth"] = json.Number("9223372036854775807") }, nil, ""},
		{"depth beyond int64 in v5", v5, func(m map[string]any) { m["depth"] = json.Number("9223372036854775808") }, ErrBadJSON, "depth"},
		{"float in v6", v6, func(m map[string]any) { m["content"] = map[string]any{"n": json.Number("1.5")} }, ErrBadJSON, ""},
		{"float in v5", v5, func(m map[string]any) { m["content"] = map[string]any{"n": json.Number("1.5")} }, nil, ""},
		{"float depth in v5", v5, func(m map[string]any) { m["depth"] = json.Number("2.5") }, ErrBadJSON, "depth"},
		{"v1 missing event_id", v1, func(m map[string]any) { delete(m, "event_id") }, ErrBadJSON, "event_id"},
		{"v1 bad event_id", v1, func(m map[string]any) { m["event_id"] = "$nodomain" }, ErrInvalidParam, "event_id"},
		{"v1 ref not a pair", v1, func(m map[string]any) { m["prev_events"] = []any{"$a:b"} }, ErrBadJSON, "prev_events"},
		{"v1 ref pair without hashes", v1, func(m map[string]any) { m["prev_events"] = []any{[]any{"$a:a.example"}} }, ErrBadJSON, "prev_events"},
		{"unsigned not an object", v12, func(m map[string]any) { m["unsigned"] = 1 }, ErrBadJSON, "unsigned"},
		{"origin of any type ignored", v12, func(m map[string]any) { m["origin"] = 1 }, nil, ""},
		{"case-variant key is not the key", v12, func(m map[string]any) { m["Sender"] = m["sender"]; delete(m, "sender") }, ErrBadJSON, "sender"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := base(c.rv)
			c.mut(m)
			e, err := ParseEvent(encode(m), c.rv)
			if c.class == nil {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				if e.EventID() == "" {
					t.Error("no event ID")
				}
				return
			}
			if !errors.Is(err, c.class) {
				t.Fatalf("got %v, want class %v", err, c.class)
			}
			var fe *FormatError
			if c.field != "" && (!errors.As(err, &fe) || fe.Field != c.field) {
				t.Errorf("error %v names field %q, want %q", err, func() string {
					if fe != nil {
						return fe.Field
					}
					return ""
				}(), c.field)
			}
			if Errcode(err) == "" {
				t.Errorf("no Matrix error code for %v", err)
			}
		})
	}
}

func egIDs(rv *RoomVersion, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = egEventID(rv, i)
	}
	return ids
}

func TestParseEventSizeLimit(t *testing.T) {
	rv := MustRoomVersion("12")
	e := egBuild(t, rv, egProto(rv, "@alice:a.example"))
	fill := func(n int) []byte {
		// Grow content.body so the canonical event is exactly n bytes.
		body := "hello"
		pad := n - len(e.JSON())
		return bytes.Replace(e.JSON(), []byte(`"body":"`+body+`"`), []byte(`"body":"`+body+strings.Repeat("x", pad)+`"`), 1)
	}
	if _, err := ParseEvent(fill(MaxPDUSize), rv); err != nil {
		t.Errorf("event of exactly %d bytes: %v", MaxPDUSize, err)
	}
	if _, err := ParseEvent(fill(MaxPDUSize+1), rv); !errors.Is(err, ErrTooLarge) || Errcode(err) != "M_TOO_LARGE" {
		t.Errorf("event of %d bytes: %v", MaxPDUSize+1, err)
	}
	// unsigned does not count: relays may change it.
	big := fill(MaxPDUSize)
	big = append(big[:len(big)-1], []byte(`,"unsigned":{"pad":"`+strings.Repeat("y", 1000)+`"}}`)...)
	if _, err := ParseEvent(big, rv); err != nil {
		t.Errorf("unsigned counted towards the limit: %v", err)
	}
}

// A v3+ PDU with an event_id added in transit is a different event, whose
// signature no longer verifies: the claimed ID is never used.
func TestParseEventStrayEventID(t *testing.T) {
	rv := MustRoomVersion("10")
	e := egBuild(t, rv, egProto(rv, "@alice:a.example"))
	withID := append([]byte(`{"event_id":"$claimed:evil.example",`), e.JSON()[1:]...)
	p, err := ParseEvent(withID, rv)
	if err != nil {
		t.Fatal(err)
	}
	if p.EventID() == e.EventID() || p.EventID() == "$claimed:evil.example" {
		t.Errorf("event ID %s", p.EventID())
	}
	keys := egKeys(map[string]ed25519.PrivateKey{"a.example ed25519:1": egSeededKey(1)})
	if err := VerifyEventSignatures(p, keys); !errors.Is(err, ErrBadSignature) {
		t.Errorf("altered event verified: %v", err)
	}
}

func TestParseEventPrettyInput(t *testing.T) {
	rv := MustRoomVersion("12")
	e, err := ParseEvent([]byte(egBenchPDU), rv)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := CanonicalJSON([]byte(egBenchPDU))
	if !bytes.Equal(e.JSON(), c) {
		t.Error("JSON() of a parsed event is not its canonical form")
	}
	if string(e.Unsigned()) != `{"age":1234}` || e.Redacted() {
		t.Errorf("unsigned %s", e.Unsigned())
	}
	if !strings.HasPrefix(e.EventID(), "$") || len(e.EventID()) != 44 {
		t.Errorf("event ID %q", e.EventID())
	}
	if _, err := ParseEvent([]byte(`[]`), rv); !errors.Is(err, ErrBadJSON) {
		t.Errorf("array: %v", err)
	}
	if _, err := ParseEvent([]byte(`{"a":1,"a":2}`), rv); !errors.Is(err, ErrBadJSON) {
		t.Errorf("duplicate key: %v", err)
	}
}

func TestTrustedEventDecoding(t *testing.T) {
	v11 := MustRoomVersion("11")
	// Minimal JSON, as the auth and state-res tests build it: no hashes,
	// signatures, depth or refs, pretty-printed and with nulls.
	raw := []byte(`{
		"type": "m.room.member", "state_key": "@b:x", "sender": "@a:x",
		"room_id": "!r:x", "content": {"membership": "invite", "Membership": "ban"},
		"unsigned": null, "prev_events": ["$p"], "auth_events": null
	}`)
	e, err := NewEventFromTrustedJSON(raw, v11, "$given")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.JSON(), raw) {
		t.Error("JSON() is not the bytes given")
	}
	if m, err := e.Membership(); err != nil || m != "invite" {
		t.Errorf("membership %q, %v (exact key only)", m, err)
	}
	if e.EventID() != "$given" || e.StateTuple() != (StateKey{"m.room.member", "@b:x"}) || !e.StateKeyEquals("@b:x") {
		t.Error("accessors")
	}
	if len(e.PrevEventIDs()) != 1 || e.AuthEventIDs() != nil || e.Unsigned() != nil {
		t.Errorf("refs %v %v unsigned %s", e.PrevEventIDs(), e.AuthEventIDs(), e.Unsigned())
	}
	if _, err := (&Event{version: v11, f: eventFields{Type: "m.room.create"}}).Membership(); err == nil {
		t.Error("membership of a non-member event")
	}
	// A trusted event without event_id in JSON takes the one given; with
	// an empty one given, it falls back to the JSON's (v1–v2 style).
	v1 := MustRoomVersion("1")
	e1, err := NewEventFromTrustedJSON([]byte(`{"event_id":"$e:x","type":"t","prev_events":[["$p:x",{}]]}`), v1, "")
	if err != nil || e1.EventID() != "$e:x" || e1.PrevEventIDs()[0] != "$p:x" {
		t.Errorf("v1 trusted: %v %v", e1, err)
	}
	if _, err := NewEventFromTrustedJSON([]byte(`{"depth":"x"}`), v11, "$x"); err == nil {
		t.Error("string depth accepted")
	}
	if _, err := NewEventFromTrustedJSON([]byte(`{"a":`), v11, "$x"); err == nil {
		t.Error("bad JSON accepted")
	}
	ids, err := decodeEventRefs(json.RawMessage(`[ "$a", "$b" ]`), v11)
	if err != nil || len(ids) != 2 {
		t.Errorf("decodeEventRefs: %v %v", ids, err)
	}
}

func TestRedactsAccessor(t *testing.T) {
	for _, tc := range []struct {
		rv   RoomVersionID
		json string
		want string
	}{
		{"10", `{"type":"m.room.redaction","redacts":"$top","content":{"redacts":"$c"}}`, "$top"},
		{"11", `{"type":"m.room.redaction","redacts":"$top","content":{"redacts":"$c"}}`, "$c"},
		{"11", `{"type":"m.room.redaction","redacts":"$top","content":{}}`, "$top"},
		{"11", `{"type":"m.room.redaction","redacts":5,"content":{"redacts":"$c"}}`, "$c"},
		{"11", `{"type":"m.room.message","redacts":"$top","content":{"redacts":"$c"}}`, ""},
	} {
		e, err := NewEventFromTrustedJSON([]byte(tc.json), MustRoomVersion(tc.rv), "$e")
		if err != nil {
			t.Fatal(err)
		}
		if got := e.Redacts(); got != tc.want {
			t.Errorf("v%s %s: Redacts() = %q, want %q", tc.rv, tc.json, got, tc.want)
		}
	}
	if _, err := NewEventFromTrustedJSON([]byte(`{"type":"m.room.redaction","redacts":5}`), MustRoomVersion("10"), "$e"); err == nil {
		t.Error("v10: numeric redacts accepted")
	}
}

func TestWithUnsignedAndClientEvent(t *testing.T) {
	rv := MustRoomVersion("12")
	p := egProto(rv, "@alice:a.example")
	p.Type, p.StateKey = "m.room.topic", egStr("")
	p.Content = json.RawMessage(`{"topic":"hi"}`)
	e := egBuild(t, rv, p)
	u, err := e.WithUnsigned(json.RawMessage(`{"age": 10, "prev_content": {"topic":"old"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if u.EventID() != e.EventID() || string(u.Unsigned()) != `{"age":10,"prev_content":{"topic":"old"}}` {
		t.Errorf("WithUnsigned: %s %s", u.EventID(), u.Unsigned())
	}
	if e.Unsigned() != nil {
		t.Error("WithUnsigned modified the original")
	}
	keys := egKeys(map[string]ed25519.PrivateKey{"a.example ed25519:1": egSeededKey(1)})
	if err := VerifyEventSignatures(u, keys); err != nil {
		t.Errorf("signatures after WithUnsigned: %v", err)
	}
	if err := u.CheckContentHash(); err != nil {
		t.Errorf("content hash after WithUnsigned: %v", err)
	}
	ce, err := u.ToClientEvent()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"content":{"topic":"hi"},"event_id":"` + e.EventID() + `","origin_server_ts":1700000000000,"room_id":"` + p.RoomID +
		`","sender":"@alice:a.example","state_key":"","type":"m.room.topic","unsigned":{"age":10,"prev_content":{"topic":"old"}}}`
	if string(ce) != want {
		t.Errorf("client event\n got  %s\n want %s", ce, want)
	}
	cleared, err := u.WithUnsigned(nil)
	if err != nil || cleared.Unsigned() != nil || !bytes.Equal(cleared.JSON(), e.JSON()) {
		t.Errorf("WithUnsigned(nil): %s, %v", cleared.JSON(), err)
	}
	if _, err := e.WithUnsigned(json.RawMessage(`[1]`)); err == nil {
		t.Error("non-object unsigned accepted")
	}
	if !bytes.Equal(e.CanonicalPDU(), e.JSON()) {
		t.Error("CanonicalPDU differs from JSON for a built event")
	}
}

func TestErrcode(t *testing.T) {
	for err, want := range map[error]string{
		badJSON("x", "y"):                           "M_BAD_JSON",
		tooLarge("x", "y"):                          "M_TOO_LARGE",
		invalidParam("x", "y", errors.New("z")):     "M_INVALID_PARAM",
		fmt.Errorf("wrapped: %w", tooLarge("", "")): "M_TOO_LARGE",
		errors.New("other"):                         "",
	} {
		if got := Errcode(err); got != want {
			t.Errorf("Errcode(%v) = %q, want %q", err, got, want)
		}
	}
	err := invalidParam("sender", "bad", errors.New("cause"))
	if !strings.Contains(err.Error(), "sender") || !strings.Contains(err.Error(), "cause") {
		t.Errorf("message %q", err)
	}
}
