package eventgraph

import (
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// Helpers shared by the canonical JSON, hashing, signing, redaction and
// event tests. Names carry a "vec"/"eg" prefix to stay clear of the auth and
// state-resolution tests in the same package.

func vecLoad(t testing.TB, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "vectors", name))
	if err != nil {
		t.Fatalf("read vector %s: %v", name, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode vector %s: %v", name, err)
	}
}

type vecSigningKey struct {
	SeedBase64 string `json:"seed_base64"`
	ServerName string `json:"server_name"`
	KeyID      string `json:"key_id"`
	Derived    struct {
		PublicKey string `json:"ed25519_public_key_unpadded_base64"`
	} `json:"derived"`
}

// vecSpecKey is the spec's test signing key (appendices, "Signing Key").
func vecSpecKey(t testing.TB) (priv ed25519.PrivateKey, server, keyID string) {
	t.Helper()
	var k vecSigningKey
	vecLoad(t, "signing_key.json", &k)
	seed, err := DecodeBase64(k.SeedBase64)
	if err != nil {
		t.Fatal(err)
	}
	priv, err = SigningKeyFromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	return priv, k.ServerName, k.KeyID
}

// egCanon canonicalises leniently or fails the test.
func egCanon(t testing.TB, v any) []byte {
	t.Helper()
	var raw []byte
	switch x := v.(type) {
	case []byte:
		raw = x
	case json.RawMessage:
		raw = x
	case string:
		raw = []byte(x)
	default:
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		raw = b
	}
	c, err := CanonicalJSONLenient(raw)
	if err != nil {
		t.Fatalf("canonicalise %s: %v", raw, err)
	}
	return c
}

// egVersions lists every supported room version.
func egVersions() []*RoomVersion {
	var out []*RoomVersion
	for _, id := range SupportedRoomVersions() {
		out = append(out, MustRoomVersion(id))
	}
	return out
}

// egKeys is a KeyLookup over a fixed set of keys valid forever.
func egKeys(keys map[string]ed25519.PrivateKey) KeyLookup {
	return func(server, keyID string) (VerifyKey, bool) {
		k, ok := keys[server+" "+keyID]
		if !ok {
			return VerifyKey{}, false
		}
		return VerifyKey{Key: k.Public().(ed25519.PublicKey), ValidUntilTS: 1<<63 - 1}, true
	}
}

// egSeededKey derives a deterministic key from a one-byte label.
func egSeededKey(label byte) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = label
	}
	return ed25519.NewKeyFromSeed(seed)
}

// withoutMember returns the canonical object canon without key (canon itself
// if the key is absent).
func withoutMember(canon []byte, key string) []byte {
	var buf [24]jmember
	ms, ok := splitObject(canon, buf[:0])
	if !ok {
		return canon
	}
	if _, ok := jget(ms, key); !ok {
		return canon
	}
	return appendObject(make([]byte, 0, len(canon)), removeMembers(ms, key))
}
