package eventgraph

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
)

func TestBase64SpecVectors(t *testing.T) {
	var v struct {
		Cases []struct {
			In       string `json:"input_utf8"`
			Expected string `json:"expected"`
		} `json:"cases"`
	}
	vecLoad(t, "unpadded_base64.json", &v)
	if len(v.Cases) != 7 {
		t.Fatalf("want 7 cases, got %d", len(v.Cases))
	}
	for _, c := range v.Cases {
		if got := EncodeBase64([]byte(c.In)); got != c.Expected {
			t.Errorf("encode %q = %q, want %q", c.In, got, c.Expected)
		}
		if got := string(AppendBase64([]byte("x"), []byte(c.In))); got != "x"+c.Expected {
			t.Errorf("append %q = %q", c.In, got)
		}
		for _, in := range []string{c.Expected, c.Expected + strings.Repeat("=", (4-len(c.Expected)%4)%4)} {
			got, err := DecodeBase64(in)
			if err != nil || string(got) != c.In {
				t.Errorf("decode %q = %q, %v", in, got, err)
			}
		}
	}
}

func TestBase64URLSafe(t *testing.T) {
	b := []byte{0xfb, 0xff, 0xbf}
	if got := EncodeBase64(b); got != "+/+/" {
		t.Errorf("std: %s", got)
	}
	if got := EncodeBase64URL(b); got != "-_-_" {
		t.Errorf("url: %s", got)
	}
	if got := string(AppendBase64URL(nil, []byte{0xff})); got != "_w" {
		t.Errorf("url append: %s", got)
	}
	for _, in := range []string{"_w", "_w=="} {
		if got, err := DecodeBase64URL(in); err != nil || !bytes.Equal(got, []byte{0xff}) {
			t.Errorf("url decode %q: %x %v", in, got, err)
		}
	}
	for _, bad := range []string{"_w", "Zg=", "Zm9v\n", "Zm9v\r", "Z", "Zg==="} {
		if _, err := DecodeBase64(bad); err == nil {
			t.Errorf("std decode accepted %q", bad)
		}
	}
	if _, err := DecodeBase64URL("+w"); err == nil {
		t.Error("url decode accepted '+'")
	}
}

func TestContentHash(t *testing.T) {
	ev := []byte(`{"type":"x","content":{"b":1},"unsigned":{"age":1},"signatures":{"a":{}},"hashes":{"sha256":"old","other":"keep"}}`)
	h, err := ContentHash(ev)
	if err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256([]byte(`{"content":{"b":1},"type":"x"}`)); h != want {
		t.Errorf("content hash covers the wrong bytes")
	}
	out, err := AddContentHash(ev)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"content":{"b":1},"hashes":{"other":"keep","sha256":"` + EncodeBase64(h[:]) + `"},"signatures":{"a":{}},"type":"x","unsigned":{"age":1}}`
	if string(out) != want {
		t.Errorf("AddContentHash:\n got  %s\n want %s", out, want)
	}
	if err := CheckContentHash(out); err != nil {
		t.Errorf("check: %v", err)
	}
	tampered := bytes.Replace(out, []byte(`"b":1`), []byte(`"b":2`), 1)
	if err := CheckContentHash(tampered); !errors.Is(err, ErrContentHashMismatch) {
		t.Errorf("tampered: %v", err)
	}
	if err := CheckContentHash(ev); !errors.Is(err, ErrContentHashMismatch) {
		t.Errorf("non-base64 hash: %v", err)
	}
	for _, noHash := range []string{`{"type":"x"}`, `{"hashes":{}}`, `{"hashes":{"sha256":1}}`} {
		if err := CheckContentHash([]byte(noHash)); !errors.Is(err, ErrMissingContentHash) {
			t.Errorf("%s: %v", noHash, err)
		}
	}
	if _, err := AddContentHash([]byte(`{"hashes":[]}`)); err == nil {
		t.Error("non-object hashes accepted")
	}
	if _, err := ContentHash([]byte(`[]`)); err == nil {
		t.Error("array hashed")
	}
}

func TestEventIDFormats(t *testing.T) {
	pdu := []byte(`{"type":"m.room.create","sender":"@u:d","state_key":"","content":{"room_version":"x"},"hashes":{"sha256":"h"},"signatures":{"d":{"ed25519:1":"s"}},"unsigned":{"age":4},"depth":1,"prev_events":[],"auth_events":[],"origin_server_ts":1}`)
	for _, rv := range egVersions() {
		h, err := ReferenceHash(pdu, rv)
		if err != nil {
			t.Fatal(err)
		}
		redacted, _ := Redact(pdu, rv)
		want := sha256.Sum256(withoutMember(redacted, "signatures"))
		if h != want {
			t.Errorf("v%s: reference hash is not sha256(redacted minus signatures)", rv.ID)
		}
		id, err := ComputeEventID(pdu, rv)
		switch rv.EventIDs {
		case EventIDFormatV1:
			if err == nil {
				t.Errorf("v%s: event ID computed for an event without event_id: %s", rv.ID, id)
			}
			continue
		case EventIDFormatV3:
			if err != nil || id != "$"+EncodeBase64(h[:]) {
				t.Errorf("v%s: %s, %v", rv.ID, id, err)
			}
		default:
			if err != nil || id != "$"+EncodeBase64URL(h[:]) {
				t.Errorf("v%s: %s, %v", rv.ID, id, err)
			}
		}
		if err := ValidateEventID(id, rv); err != nil {
			t.Errorf("v%s: computed ID invalid: %v", rv.ID, err)
		}
		// A stray event_id is protected by redaction, so it is hashed.
		withID := append([]byte(`{"event_id":"$whatever:d",`), pdu[1:]...)
		if id2, _ := ComputeEventID(withID, rv); id2 == id {
			t.Errorf("v%s: event_id not covered by the reference hash", rv.ID)
		}
		// Nor do signatures or unsigned.
		other := bytes.Replace(pdu, []byte(`"age":4`), []byte(`"age":5`), 1)
		other = bytes.Replace(other, []byte(`"s"}`), []byte(`"t"}`), 1)
		if id2, _ := ComputeEventID(other, rv); id2 != id {
			t.Errorf("v%s: unsigned/signatures changed the ID", rv.ID)
		}
	}
	v1 := MustRoomVersion("1")
	if id, err := ComputeEventID([]byte(`{"event_id":"$abc:d","type":"x"}`), v1); err != nil || id != "$abc:d" {
		t.Errorf("v1: %s, %v", id, err)
	}
	if _, err := ComputeEventID([]byte(`{"event_id":5}`), v1); err == nil {
		t.Error("v1: numeric event_id accepted")
	}
	if rid, err := RoomIDFromCreateEventID("$abc"); err != nil || rid != "!abc" {
		t.Errorf("RoomIDFromCreateEventID: %s, %v", rid, err)
	}
	if _, err := RoomIDFromCreateEventID("!abc"); err == nil {
		t.Error("room ID from a non-event ID")
	}
}
