package storage

import (
	"encoding/json"
	"fmt"

	"go.etcd.io/bbolt"
)

// The keys of one remote server, kept by its server actor (identity
// server/<name>): every signing key learnt with how long it is valid, and
// the server's latest self-signed key response, which this server serves
// again as a notary.

const serverKeysStore = "serverkeys"

var serverKeysKey = []byte("keys")

// ServerKey is one signing key of a remote server.
type ServerKey struct {
	// Key is the ed25519 public key.
	Key []byte `json:"key"`
	// ValidUntilTS is, for a key from verify_keys, its valid_until_ts
	// capped at seven days after it was fetched; for one from
	// old_verify_keys, its expired_ts.
	ValidUntilTS int64 `json:"valid_until_ts"`
	// Old: the key was listed in old_verify_keys (valid for events only).
	Old bool `json:"old,omitempty"`
	// FetchedTS is when the key was last seen in a response.
	FetchedTS int64 `json:"fetched_ts"`
}

// ServerKeys is what a server actor keeps.
type ServerKeys struct {
	Keys map[string]ServerKey `json:"keys"`
	// Responses are the server's latest self-signed key responses (one per
	// response received in the latest fetch), as received.
	Responses []json.RawMessage `json:"responses,omitempty"`
	FetchedTS int64             `json:"fetched_ts"`
}

// ServerKeysOf reads the keys stored for the server actor identity.
func ServerKeysOf(tx *bbolt.Tx, identity string) (k ServerKeys, ok bool, err error) {
	b, err := Namespace(tx, false, identity, serverKeysStore)
	if err != nil || b == nil {
		return k, false, err
	}
	v := b.Get(serverKeysKey)
	if v == nil {
		return k, false, nil
	}
	if err := json.Unmarshal(v, &k); err != nil {
		return k, false, fmt.Errorf("storage: server keys %s: decode: %w", identity, err)
	}
	return k, true, nil
}

// PutServerKeys stores the keys of the server actor identity.
func PutServerKeys(tx *bbolt.Tx, identity string, k ServerKeys) error {
	b, err := Namespace(tx, true, identity, serverKeysStore)
	if err != nil {
		return fmt.Errorf("storage: server keys %s: %w", identity, err)
	}
	v, err := json.Marshal(k)
	if err != nil {
		return fmt.Errorf("storage: server keys %s: encode: %w", identity, err)
	}
	return b.Put(serverKeysKey, v)
}
