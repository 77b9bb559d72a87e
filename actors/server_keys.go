package actors

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// Checking a server's key response (server-server API, "Publishing Keys"):
// pure code, used both by the fetch goroutine (to decide whether to fall
// back to a notary) and by the server actor before it keeps anything.

// Bounds on what a peer's key response may contain.
const (
	MaxKeyResponseBytes = 64 << 10
	maxKeysPerResponse  = 32
	maxKeysPerServer    = 128
)

// Notary is a key server trusted to vouch for other servers' keys, with the
// keys it signs its answers with.
type Notary struct {
	ServerName string
	Keys       map[string]ed25519.PublicKey
}

type keyResponse struct {
	ServerName   *string `json:"server_name"`
	ValidUntilTS *int64  `json:"valid_until_ts"`
	VerifyKeys   map[string]struct {
		Key string `json:"key"`
	} `json:"verify_keys"`
	OldVerifyKeys map[string]struct {
		Key       string `json:"key"`
		ExpiredTS int64  `json:"expired_ts"`
	} `json:"old_verify_keys"`
}

// ParseServerKeyResponse checks one key response of server name, received
// at nowMS: it names the server, lists at least one ed25519 verify key, and
// carries a valid signature by every ed25519 verify key it lists. It
// returns the keys with their validity: valid_until_ts capped at nowMS + 7
// days for verify keys (eventgraph.CapKeyValidUntil), expired_ts for old
// ones. Keys of other algorithms are skipped.
func ParseServerKeyResponse(raw []byte, name string, nowMS int64) (map[string]storage.ServerKey, error) {
	if len(raw) > MaxKeyResponseBytes {
		return nil, fmt.Errorf("key response of %s: %d bytes, over %d", name, len(raw), MaxKeyResponseBytes)
	}
	var r keyResponse
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("key response of %s: %w", name, err)
	}
	if r.ServerName == nil || *r.ServerName != name {
		return nil, fmt.Errorf("key response for %s does not name it as server_name", name)
	}
	if r.ValidUntilTS == nil {
		return nil, fmt.Errorf("key response of %s: no valid_until_ts", name)
	}
	if len(r.VerifyKeys)+len(r.OldVerifyKeys) > maxKeysPerResponse {
		return nil, fmt.Errorf("key response of %s: more than %d keys", name, maxKeysPerResponse)
	}
	out := map[string]storage.ServerKey{}
	for id, k := range r.OldVerifyKeys {
		if !strings.HasPrefix(id, eventgraph.KeyAlgorithmEd25519+":") {
			continue
		}
		pub, err := eventgraph.DecodeBase64(k.Key)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("key response of %s: old key %s is not an ed25519 key", name, id)
		}
		out[id] = storage.ServerKey{Key: pub, ValidUntilTS: k.ExpiredTS, Old: true, FetchedTS: nowMS}
	}
	current := 0
	for id, k := range r.VerifyKeys {
		if !strings.HasPrefix(id, eventgraph.KeyAlgorithmEd25519+":") {
			continue
		}
		if _, _, err := eventgraph.ParseKeyID(id); err != nil {
			return nil, fmt.Errorf("key response of %s: %w", name, err)
		}
		pub, err := eventgraph.DecodeBase64(k.Key)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("key response of %s: key %s is not an ed25519 key", name, id)
		}
		if err := eventgraph.VerifyJSON(raw, name, id, pub); err != nil {
			return nil, fmt.Errorf("key response of %s: self-signature by %s: %w", name, id, err)
		}
		out[id] = storage.ServerKey{Key: pub, ValidUntilTS: eventgraph.CapKeyValidUntil(*r.ValidUntilTS, nowMS), FetchedTS: nowMS}
		current++
	}
	if current == 0 {
		return nil, fmt.Errorf("key response of %s: no ed25519 verify key", name)
	}
	return out, nil
}

// errNotaryUnsigned: a notary's answer carries no valid signature by any
// key configured for it.
var errNotaryUnsigned = errors.New("not signed by a configured key of the notary")

// checkNotarySignature checks that raw (one entry of a notary's
// server_keys) is signed by one of the notary's configured keys.
func checkNotarySignature(raw []byte, n Notary) error {
	for id, pub := range n.Keys {
		if err := eventgraph.VerifyJSON(raw, n.ServerName, id, pub); err == nil {
			return nil
		}
	}
	return fmt.Errorf("notary %s: %w", n.ServerName, errNotaryUnsigned)
}

// NotaryResponses takes the entries of a notary's /_matrix/key/v2/query
// answer that are about name, valid, and signed by the notary.
func NotaryResponses(body []byte, n Notary, name string, nowMS int64) ([][]byte, error) {
	var doc struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("notary %s: %w", n.ServerName, err)
	}
	var out [][]byte
	var errs []error
	for i, raw := range doc.ServerKeys {
		if i == maxKeysPerResponse {
			break
		}
		if _, err := ParseServerKeyResponse(raw, name, nowMS); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := checkNotarySignature(raw, n); err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, raw)
	}
	if len(out) == 0 {
		errs = append(errs, fmt.Errorf("notary %s: no usable key response for %s", n.ServerName, name))
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// KeyLookupFrom makes the eventgraph.KeyLookup of the keys server actors
// replied with (server name → reply), for verifying event signatures:
// verify keys with their capped validity, old keys until their expired_ts.
func KeyLookupFrom(replies map[string]*pb.ServerKeysReply) eventgraph.KeyLookup {
	return func(serverName, keyID string) (eventgraph.VerifyKey, bool) {
		rep := replies[serverName]
		if rep == nil {
			return eventgraph.VerifyKey{}, false
		}
		for _, k := range rep.Keys {
			if k.KeyId == keyID && len(k.Key) == ed25519.PublicKeySize {
				return eventgraph.VerifyKey{Key: ed25519.PublicKey(k.Key), ValidUntilTS: k.ValidUntilTs}, true
			}
		}
		return eventgraph.VerifyKey{}, false
	}
}
