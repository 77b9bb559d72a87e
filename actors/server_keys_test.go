package actors

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

func keyResponseFor(t *testing.T, name string, validUntil int64, priv ed25519.PrivateKey, signer string) []byte {
	t.Helper()
	body, _ := json.Marshal(map[string]any{
		"server_name":     name,
		"valid_until_ts":  validUntil,
		"verify_keys":     map[string]any{"ed25519:k1": map[string]string{"key": base64.RawStdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey))}},
		"old_verify_keys": map[string]any{"ed25519:old": map[string]any{"key": base64.RawStdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)), "expired_ts": 5}},
	})
	signed, err := eventgraph.SignJSON(body, signer, "ed25519:k1", priv)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func TestParseServerKeyResponse(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	const now = int64(1_000_000)
	keys, err := ParseServerKeyResponse(keyResponseFor(t, "b.test", now+1000, priv, "b.test"), "b.test", now)
	if err != nil {
		t.Fatal(err)
	}
	if k := keys["ed25519:k1"]; k.Old || k.ValidUntilTS != now+1000 {
		t.Fatalf("verify key %+v", k)
	}
	if k := keys["ed25519:old"]; !k.Old || k.ValidUntilTS != 5 {
		t.Fatalf("old key %+v", k)
	}
	// valid_until_ts beyond seven days is capped.
	keys, err = ParseServerKeyResponse(keyResponseFor(t, "b.test", now*1000, priv, "b.test"), "b.test", now)
	if err != nil || keys["ed25519:k1"].ValidUntilTS != now+eventgraph.MaxKeyValidityMS {
		t.Fatalf("cap: %+v %v", keys, err)
	}
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	forged := keyResponseFor(t, "b.test", now+1000, priv, "b.test")
	var m map[string]any
	_ = json.Unmarshal(forged, &m)
	m["verify_keys"] = map[string]any{"ed25519:k1": map[string]string{"key": base64.RawStdEncoding.EncodeToString(other.Public().(ed25519.PublicKey))}}
	forged, _ = json.Marshal(m)
	for name, raw := range map[string][]byte{
		"other server":    keyResponseFor(t, "c.test", now+1000, priv, "c.test"),
		"not self-signed": keyResponseFor(t, "b.test", now+1000, priv, "c.test"),
		"key swapped":     forged,
		"not JSON":        []byte("{"),
		"too large":       []byte(`{"x":"` + strings.Repeat("a", MaxKeyResponseBytes) + `"}`),
		"no keys":         []byte(`{"server_name":"b.test","valid_until_ts":1,"verify_keys":{}}`),
	} {
		if _, err := ParseServerKeyResponse(raw, "b.test", now); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A notary's entry must carry the notary's signature.
	_, npriv, _ := ed25519.GenerateKey(rand.Reader)
	entry := keyResponseFor(t, "b.test", now+1000, priv, "b.test")
	n := Notary{ServerName: "n.test", Keys: map[string]ed25519.PublicKey{"ed25519:n": npriv.Public().(ed25519.PublicKey)}}
	body, _ := json.Marshal(map[string]any{"server_keys": []json.RawMessage{entry}})
	if _, err := NotaryResponses(body, n, "b.test", now); err == nil {
		t.Fatal("entry without the notary's signature accepted")
	}
	signed, _ := eventgraph.SignJSON(entry, "n.test", "ed25519:n", npriv)
	body, _ = json.Marshal(map[string]any{"server_keys": []json.RawMessage{signed}})
	if rs, err := NotaryResponses(body, n, "b.test", now); err != nil || len(rs) != 1 {
		t.Fatalf("notary entry: %v", err)
	}
}

func TestKeyLookupFrom(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	look := KeyLookupFrom(map[string]*pb.ServerKeysReply{"b.test": {Keys: []*pb.ServerKey{
		{KeyId: "ed25519:k1", Key: pub, ValidUntilTs: 99},
		{KeyId: "ed25519:old", Key: pub, ValidUntilTs: 5, Old: true},
	}}})
	if k, ok := look("b.test", "ed25519:k1"); !ok || k.ValidUntilTS != 99 || !k.Key.Equal(pub) {
		t.Fatalf("k1: %+v %v", k, ok)
	}
	if k, ok := look("b.test", "ed25519:old"); !ok || k.ValidUntilTS != 5 {
		t.Fatalf("old: %+v %v", k, ok)
	}
	if _, ok := look("b.test", "ed25519:none"); ok {
		t.Fatal("unknown key found")
	}
	if _, ok := look("c.test", "ed25519:k1"); ok {
		t.Fatal("unknown server found")
	}
}
