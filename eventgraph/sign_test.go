package eventgraph

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestSigningKeyVector(t *testing.T) {
	var k vecSigningKey
	vecLoad(t, "signing_key.json", &k)
	priv, server, keyID := vecSpecKey(t)
	if got := EncodeBase64(priv.Public().(ed25519.PublicKey)); got != k.Derived.PublicKey {
		t.Errorf("public key %s, want %s", got, k.Derived.PublicKey)
	}
	if server != "domain" || keyID != "ed25519:1" {
		t.Errorf("server %q key %q", server, keyID)
	}
	if alg, ver, err := ParseKeyID(keyID); err != nil || alg != "ed25519" || ver != "1" {
		t.Errorf("ParseKeyID = %q %q %v", alg, ver, err)
	}
}

func TestJSONSigningVectors(t *testing.T) {
	var v struct {
		Cases []struct {
			Name     string          `json:"name"`
			Input    json.RawMessage `json:"input"`
			Expected json.RawMessage `json:"expected_signed"`
		} `json:"cases"`
	}
	vecLoad(t, "json_signing.json", &v)
	priv, server, keyID := vecSpecKey(t)
	pub := priv.Public().(ed25519.PublicKey)
	for _, c := range v.Cases {
		t.Run(c.Name, func(t *testing.T) {
			got, err := SignJSON(c.Input, server, keyID, priv)
			if err != nil {
				t.Fatal(err)
			}
			if want := egCanon(t, c.Expected); !bytes.Equal(got, want) {
				t.Errorf("got  %s\nwant %s", got, want)
			}
			if err := VerifyJSON(c.Expected, server, keyID, pub); err != nil {
				t.Errorf("spec's signed object does not verify: %v", err)
			}
		})
	}
}

func TestSignJSONMergesAndVerifies(t *testing.T) {
	priv, server, keyID := vecSpecKey(t)
	pub := priv.Public().(ed25519.PublicKey)
	other := egSeededKey(7)
	in := []byte(`{"b":1,"a":"x","unsigned":{"age":5},"signatures":{"zz.example":{"ed25519:z":"c2ln"},"domain":{"ed25519:0":"b2xk"}}}`)
	out, err := SignJSON(in, server, keyID, priv)
	if err != nil {
		t.Fatal(err)
	}
	out2, err := SignJSON(out, "aa.example", "ed25519:k", other)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Signatures map[string]map[string]string `json:"signatures"`
		Unsigned   map[string]int               `json:"unsigned"`
	}
	if err := json.Unmarshal(out2, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Signatures) != 3 || len(got.Signatures["domain"]) != 2 || got.Signatures["zz.example"]["ed25519:z"] != "c2ln" {
		t.Errorf("signatures not merged: %v", got.Signatures)
	}
	if got.Unsigned["age"] != 5 {
		t.Errorf("unsigned lost: %s", out2)
	}
	if c, _ := CanonicalJSON(out2); !bytes.Equal(c, out2) {
		t.Errorf("output not canonical: %s", out2)
	}
	if err := VerifyJSON(out2, server, keyID, pub); err != nil {
		t.Errorf("verify domain: %v", err)
	}
	if err := VerifyJSON(out2, "aa.example", "ed25519:k", other.Public().(ed25519.PublicKey)); err != nil {
		t.Errorf("verify aa.example: %v", err)
	}
	// unsigned is not covered; content is.
	changedUnsigned := bytes.Replace(out2, []byte(`"age":5`), []byte(`"age":6`), 1)
	if err := VerifyJSON(changedUnsigned, server, keyID, pub); err != nil {
		t.Errorf("changing unsigned broke the signature: %v", err)
	}
	changed := bytes.Replace(out2, []byte(`"a":"x"`), []byte(`"a":"y"`), 1)
	if err := VerifyJSON(changed, server, keyID, pub); !errors.Is(err, ErrBadSignature) {
		t.Errorf("tampered object: %v", err)
	}
	if err := VerifyJSON(out2, server, keyID, other.Public().(ed25519.PublicKey)); !errors.Is(err, ErrBadSignature) {
		t.Errorf("wrong key: %v", err)
	}
	if err := VerifyJSON(out2, "nobody.example", keyID, pub); !errors.Is(err, ErrNoSignature) {
		t.Errorf("missing signature: %v", err)
	}
	if err := VerifyJSON(out2, "zz.example", "ed25519:z", pub); !errors.Is(err, ErrBadSignature) {
		t.Errorf("malformed signature: %v", err)
	}
}

func TestSignJSONRejects(t *testing.T) {
	priv, server, keyID := vecSpecKey(t)
	for name, tc := range map[string]struct {
		obj, server, keyID string
	}{
		"not an object":         {`[1]`, server, keyID},
		"signatures not object": {`{"signatures":1}`, server, keyID},
		"server entry not obj":  {`{"signatures":{"domain":"x"}}`, server, keyID},
		"bad JSON":              {`{"a":}`, server, keyID},
		"quote in server name":  {`{}`, `dom"ain`, keyID},
		"empty key ID":          {`{}`, server, ""},
	} {
		if _, err := SignJSON([]byte(tc.obj), tc.server, tc.keyID, priv); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

type vecEventSigningCase struct {
	Name          string          `json:"name"`
	Input         json.RawMessage `json:"input"`
	Expected      json.RawMessage `json:"expected_signed"`
	ContentHash   string          `json:"expected_content_hash_sha256"`
	SignedPayload struct {
		CanonicalJSON string `json:"canonical_json"`
	} `json:"derived_redacted_signing_payload"`
}

func TestEventSigningVectors(t *testing.T) {
	var v struct {
		Cases []vecEventSigningCase `json:"cases"`
	}
	vecLoad(t, "event_signing.json", &v)
	priv, server, keyID := vecSpecKey(t)
	pub := priv.Public().(ed25519.PublicKey)
	// The vectors predate v3 and use the pre-v11 redaction algorithm; every
	// version from 1 to 10 must reproduce them.
	for _, rv := range egVersions() {
		if rv.Redaction >= RedactionV11 {
			continue
		}
		for _, c := range v.Cases {
			t.Run(string(rv.ID)+"/"+c.Name, func(t *testing.T) {
				h, err := ContentHash(c.Input)
				if err != nil || EncodeBase64(h[:]) != c.ContentHash {
					t.Fatalf("content hash %s, %v; want %s", EncodeBase64(h[:]), err, c.ContentHash)
				}
				hashed, err := AddContentHash(c.Input)
				if err != nil {
					t.Fatal(err)
				}
				if err := CheckContentHash(hashed); err != nil {
					t.Errorf("CheckContentHash: %v", err)
				}
				signed, err := SignEvent(hashed, rv, server, keyID, priv)
				if err != nil {
					t.Fatal(err)
				}
				// event_id is protected by every redaction algorithm, so the
				// vectors hold for v3+ too even though it is not v3+ format.
				if want := egCanon(t, c.Expected); !bytes.Equal(signed, want) {
					t.Errorf("signed\n got  %s\n want %s", signed, want)
				}
				payload, err := appendRedacted(nil, egCanon(t, hashed), rv, true)
				if err != nil {
					t.Fatal(err)
				}
				if rv.EventIDs == EventIDFormatV1 && string(payload) != c.SignedPayload.CanonicalJSON {
					t.Errorf("signing payload\n got  %s\n want %s", payload, c.SignedPayload.CanonicalJSON)
				}
				if err := VerifyJSON(payload, server, keyID, pub); !errors.Is(err, ErrNoSignature) {
					t.Errorf("payload should carry no signatures: %v", err)
				}
			})
		}
	}
}

func TestEventSigningV11Vectors(t *testing.T) {
	var v struct {
		Cases []vecEventSigningCase `json:"event_signing_with_v11_redaction"`
	}
	vecLoad(t, "derived_not_normative.json", &v)
	if len(v.Cases) == 0 {
		t.Fatal("no cases")
	}
	priv, server, keyID := vecSpecKey(t)
	for _, id := range []RoomVersionID{"11", "12"} {
		rv := MustRoomVersion(id)
		for _, c := range v.Cases {
			t.Run(string(id)+"/"+c.Name, func(t *testing.T) {
				hashed, err := AddContentHash(c.Input)
				if err != nil {
					t.Fatal(err)
				}
				signed, err := SignEvent(hashed, rv, server, keyID, priv)
				if err != nil {
					t.Fatal(err)
				}
				if want := egCanon(t, c.Expected); !bytes.Equal(signed, want) {
					t.Errorf("signed\n got  %s\n want %s", signed, want)
				}
			})
		}
	}
}

func TestKeyValidity(t *testing.T) {
	const day = 24 * 60 * 60 * 1000
	if got := CapKeyValidUntil(100*day, 10*day); got != 17*day {
		t.Errorf("cap: %d", got)
	}
	if got := CapKeyValidUntil(12*day, 10*day); got != 12*day {
		t.Errorf("no cap needed: %d", got)
	}
	for _, rv := range egVersions() {
		// A key valid until 1000 may sign an event at 1000 but not at 1001,
		// except where valid_until_ts must be ignored (v1–v4).
		if !KeyValidForEvent(rv, 1000, 1000) {
			t.Errorf("v%s: boundary refused", rv.ID)
		}
		if got, want := KeyValidForEvent(rv, 1000, 1001), !rv.EnforceKeyValidity; got != want {
			t.Errorf("v%s: expired key usable = %v", rv.ID, got)
		}
	}
	if MustRoomVersion("4").EnforceKeyValidity || !MustRoomVersion("5").EnforceKeyValidity {
		t.Error("key validity must start with v5")
	}
}

func TestKeyGeneration(t *testing.T) {
	r1 := bytes.NewReader(bytes.Repeat([]byte{3}, 64))
	r2 := bytes.NewReader(bytes.Repeat([]byte{3}, 64))
	a, err := GenerateSigningKey(r1)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := GenerateSigningKey(r2)
	if !a.Equal(b) {
		t.Error("same randomness gave different keys")
	}
	if !a.Equal(egSeededKey(3)) {
		t.Error("key is not derived from the seed read")
	}
	if _, err := GenerateSigningKey(bytes.NewReader([]byte{1, 2})); err == nil {
		t.Error("short randomness accepted")
	}
	id, err := NewKeyID(bytes.NewReader([]byte("abcdefgh")))
	if err != nil || !strings.HasPrefix(id, "ed25519:") || len(id) != len("ed25519:")+8 {
		t.Fatalf("NewKeyID = %q, %v", id, err)
	}
	if _, _, err := ParseKeyID(id); err != nil {
		t.Errorf("generated key ID invalid: %v", err)
	}
	for _, bad := range []string{"ed25519", "ed25519:", ":abc", "ed25519:a-b", "ed25519:a:b"} {
		if _, _, err := ParseKeyID(bad); err == nil {
			t.Errorf("ParseKeyID(%q) accepted", bad)
		}
	}
	if _, err := SigningKeyFromSeed([]byte{1}); err == nil {
		t.Error("short seed accepted")
	}
}

func TestVerifyEventSignatures(t *testing.T) {
	keyA, keyB, keyC := egSeededKey(1), egSeededKey(2), egSeededKey(3)
	all := egKeys(map[string]ed25519.PrivateKey{
		"a.example ed25519:1": keyA,
		"b.example ed25519:1": keyB,
		"c.example ed25519:1": keyC,
	})
	build := func(t *testing.T, rv *RoomVersion, p ProtoEvent) *Event {
		t.Helper()
		e, err := BuildEvent(p, rv, "a.example", "ed25519:1", keyA, WithRandom(bytes.NewReader(make([]byte, 64))))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	cosign := func(t *testing.T, e *Event, server string, key ed25519.PrivateKey) *Event {
		t.Helper()
		out, err := SignEvent(e.JSON(), e.Version(), server, "ed25519:1", key)
		if err != nil {
			t.Fatal(err)
		}
		e2, err := ParseEvent(out, e.Version())
		if err != nil {
			t.Fatal(err)
		}
		if e2.EventID() != e.EventID() {
			t.Fatalf("co-signing changed the event ID")
		}
		return e2
	}

	t.Run("sender server", func(t *testing.T) {
		for _, rv := range egVersions() {
			e := build(t, rv, egProto(rv, "@u:a.example"))
			if err := VerifyEventSignatures(e, all); err != nil {
				t.Errorf("v%s: %v", rv.ID, err)
			}
			none := egKeys(nil)
			if err := VerifyEventSignatures(e, none); !errors.Is(err, ErrNoSignature) {
				t.Errorf("v%s: unknown key: %v", rv.ID, err)
			}
		}
	})
	t.Run("sender from another server", func(t *testing.T) {
		rv := MustRoomVersion("10")
		e := build(t, rv, egProto(rv, "@u:b.example")) // signed by a.example only
		if err := VerifyEventSignatures(e, all); !errors.Is(err, ErrNoSignature) {
			t.Fatalf("want ErrNoSignature, got %v", err)
		}
		if err := VerifyEventSignatures(cosign(t, e, "b.example", keyB), all); err != nil {
			t.Errorf("after b signs: %v", err)
		}
	})
	t.Run("event ID server in v1-v2", func(t *testing.T) {
		for _, id := range []RoomVersionID{"1", "2", "3"} {
			rv := MustRoomVersion(id)
			p := egProto(rv, "@u:b.example")
			e := build(t, rv, p)
			e = cosign(t, e, "b.example", keyB)
			servers, err := RequiredSignatures(e)
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"b.example"}
			if rv.EventIDDomainSignature {
				want = append(want, "a.example")
			}
			if strings.Join(servers, ",") != strings.Join(want, ",") {
				t.Errorf("v%s: required %v, want %v", id, servers, want)
			}
			onlyB := egKeys(map[string]ed25519.PrivateKey{"b.example ed25519:1": keyB})
			err = VerifyEventSignatures(e, onlyB)
			if rv.EventIDDomainSignature != (err != nil) {
				t.Errorf("v%s: without the event ID server's key: %v", id, err)
			}
		}
	})
	t.Run("join_authorised_via_users_server", func(t *testing.T) {
		for _, rv := range egVersions() {
			p := egProto(rv, "@u:a.example")
			p.Type, p.StateKey = "m.room.member", egStr("@u:a.example")
			p.Content = json.RawMessage(`{"membership":"join","join_authorised_via_users_server":"@mod:c.example"}`)
			e := build(t, rv, p)
			err := VerifyEventSignatures(e, all)
			if rv.Restricted != (err != nil) {
				t.Errorf("v%s: unsigned by authoriser: %v", rv.ID, err)
			}
			if err := VerifyEventSignatures(cosign(t, e, "c.example", keyC), all); err != nil {
				t.Errorf("v%s: signed by authoriser: %v", rv.ID, err)
			}
			for _, bad := range []string{`5`, `null`, `"nodomain"`} {
				p.Content = json.RawMessage(`{"membership":"leave","join_authorised_via_users_server":` + bad + `}`)
				err := VerifyEventSignatures(build(t, rv, p), all)
				if rv.Restricted != errors.Is(err, ErrInvalidParam) {
					t.Errorf("v%s: authoriser %s: %v", rv.ID, bad, err)
				}
			}
		}
	})
	t.Run("bad signature from known key", func(t *testing.T) {
		rv := MustRoomVersion("12")
		e := build(t, rv, egProto(rv, "@u:a.example"))
		// The same event signed by a different key under the same ID.
		forged, err := SignEvent(e.JSON(), rv, "a.example", "ed25519:1", keyB)
		if err != nil {
			t.Fatal(err)
		}
		fe, err := ParseEvent(forged, rv)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyEventSignatures(fe, all); !errors.Is(err, ErrBadSignature) {
			t.Errorf("want ErrBadSignature, got %v", err)
		}
	})
	t.Run("unknown algorithms and keys are skipped", func(t *testing.T) {
		rv := MustRoomVersion("12")
		e := build(t, rv, egProto(rv, "@u:a.example"))
		withExtra, err := SignEvent(e.JSON(), rv, "a.example", "ed25519:unknown", keyB)
		if err != nil {
			t.Fatal(err)
		}
		withExtra = bytes.Replace(withExtra, []byte(`"a.example":{`), []byte(`"a.example":{"curve9:x":"AAAA",`), 1)
		e2, err := ParseEvent(withExtra, rv)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyEventSignatures(e2, all); err != nil {
			t.Errorf("extra signatures should be ignored: %v", err)
		}
	})
	t.Run("key validity", func(t *testing.T) {
		for _, rv := range egVersions() {
			p := egProto(rv, "@u:a.example")
			p.OriginServerTS = 5000
			e := build(t, rv, p)
			expired := func(server, keyID string) (VerifyKey, bool) {
				return VerifyKey{Key: keyA.Public().(ed25519.PublicKey), ValidUntilTS: 4999}, server == "a.example"
			}
			err := VerifyEventSignatures(e, expired)
			if rv.EnforceKeyValidity != errors.Is(err, ErrNoSignature) {
				t.Errorf("v%s: key expired before the event: %v", rv.ID, err)
			}
		}
	})
	t.Run("redacted event still verifies", func(t *testing.T) {
		for _, rv := range egVersions() {
			e := build(t, rv, egProto(rv, "@u:a.example"))
			red, err := e.Redact(nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyEventSignatures(red, all); err != nil {
				t.Errorf("v%s: %v", rv.ID, err)
			}
			if err := red.CheckContentHash(); !errors.Is(err, ErrContentHashMismatch) {
				t.Errorf("v%s: redacted content hash: %v", rv.ID, err)
			}
		}
	})
}
