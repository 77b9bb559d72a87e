package eventgraph

import (
	"crypto/ed25519"
	"fmt"
	"io"
	"strings"
)

// KeyAlgorithmEd25519 is the only signing algorithm Matrix defines.
const KeyAlgorithmEd25519 = "ed25519"

// MaxKeyValidityMS is how far past the time it was fetched a server key may
// be trusted, whatever valid_until_ts it claims (7 days; fragment
// v5-signing-requirements). It bounds how long a stolen key stays usable
// after its owner stops publishing it.
const MaxKeyValidityMS int64 = 7 * 24 * 60 * 60 * 1000

// ParseKeyID splits a signing key identifier such as "ed25519:abc1" into its
// algorithm and version. The version may only contain [a-zA-Z0-9_] (the
// server keys schema).
func ParseKeyID(keyID string) (algorithm, version string, err error) {
	algorithm, version, ok := strings.Cut(keyID, ":")
	if !ok || algorithm == "" || version == "" {
		return "", "", invalidParam("key_id", fmt.Sprintf("%q is not algorithm:version", keyID), nil)
	}
	for i := 0; i < len(version); i++ {
		c := version[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return "", "", invalidParam("key_id", fmt.Sprintf("version of %q has characters outside [a-zA-Z0-9_]", keyID), nil)
		}
	}
	return algorithm, version, nil
}

// SigningKeyFromSeed derives the ed25519 private key from its 32-byte seed
// (the form in which keys are stored and in which the spec's test key is
// given).
func SigningKeyFromSeed(seed []byte) (ed25519.PrivateKey, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("eventgraph: signing key seed is %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// GenerateSigningKey creates a new ed25519 key pair reading its seed from
// rand. Production passes crypto/rand.Reader; tests pass a fixed stream.
func GenerateSigningKey(rand io.Reader) (ed25519.PrivateKey, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := io.ReadFull(rand, seed); err != nil {
		return nil, fmt.Errorf("eventgraph: generate signing key: %w", err)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// NewKeyID returns a fresh key ID "ed25519:<version>" whose version is
// drawn from rand (8 characters of [a-zA-Z0-9_]).
func NewKeyID(rand io.Reader) (string, error) {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
	var b [8]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return "", fmt.Errorf("eventgraph: new key ID: %w", err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)] // 256 = 4×64: no bias
	}
	return KeyAlgorithmEd25519 + ":" + string(b[:]), nil
}

// VerifyKey is a server's public key as known to the caller's key store.
type VerifyKey struct {
	Key ed25519.PublicKey
	// ValidUntilTS is the last origin_server_ts (ms) the key may sign in
	// rooms that enforce key validity (v5+). For a key from verify_keys it is
	// CapKeyValidUntil(valid_until_ts, time fetched); for one from
	// old_verify_keys it is the key's expired_ts.
	ValidUntilTS int64
}

// KeyLookup returns the key a server published under keyID, if the caller
// has it. It must not do I/O: fetch keys first (see RequiredSignatures).
type KeyLookup func(serverName, keyID string) (VerifyKey, bool)

// CapKeyValidUntil applies the 7-day cap: a key fetched at fetchedTS is
// trusted until the lesser of its valid_until_ts and fetchedTS + 7 days.
func CapKeyValidUntil(validUntilTS, fetchedTS int64) int64 {
	if limit := fetchedTS + MaxKeyValidityMS; validUntilTS > limit {
		return limit
	}
	return validUntilTS
}

// KeyValidForEvent reports whether a key valid until validUntilTS may verify
// an event with origin_server_ts eventTS in a room of version rv. Before v5
// valid_until_ts must be ignored; from v5 it must cover the event.
func KeyValidForEvent(rv *RoomVersion, validUntilTS, eventTS int64) bool {
	return !rv.EnforceKeyValidity || validUntilTS >= eventTS
}
