package eventgraph

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"strings"
)

// validUserIDForAuth is the user ID check the auth rules ask for (power
// levels users keys; v12 additional_creators, "the same user ID validation
// applied to sender"): the historical grammar servers must accept over
// federation, as ValidateUserID applies it to senders.
func validUserIDForAuth(id string) bool { return ValidateUserID(id) == nil }

// domainOf returns the server name of a user, room or v1 event ID, or ""
// if it has none.
func domainOf(id string) string {
	d, err := IDDomain(id)
	if err != nil {
		return ""
	}
	return d
}

// verifyThirdPartySigned reports whether any ed25519 signature in the signed
// object of a third-party invite verifies with any of publicKeys
// (appendices, "Checking for a Signature"; VerifyJSON does the canonical
// encoding without signatures and unsigned). The keys may use the standard or
// the URL-safe alphabet (m.room.third_party_invite schema).
func verifyThirdPartySigned(signed json.RawMessage, publicKeys []string) bool {
	var keys []ed25519.PublicKey
	for _, k := range publicKeys {
		b, err := DecodeBase64(k)
		if err != nil {
			b, err = DecodeBase64URL(k)
		}
		if err == nil && len(b) == ed25519.PublicKeySize {
			keys = append(keys, ed25519.PublicKey(b))
		}
	}
	if len(keys) == 0 {
		return false
	}
	sigs, ok := authField(signed, "signatures")
	if !ok {
		return false
	}
	verified := false
	_ = authEachMember(sigs, func(server, byKey []byte) bool {
		_ = authEachMember(byKey, func(keyID, _ []byte) bool {
			if !strings.HasPrefix(string(keyID), "ed25519:") {
				return true // an algorithm we do not understand
			}
			for _, pk := range keys {
				if VerifyJSON(signed, string(server), string(keyID), pk) == nil {
					verified = true
					return false
				}
			}
			return true
		})
		return !verified
	})
	return verified
}

// decodeAuthArray decodes raw into *a if raw is a JSON array.
func decodeAuthArray(raw json.RawMessage, a *[]json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && t[0] == '[' && json.Unmarshal(t, a) == nil
}

// hasTopLevelKeyAuth reports whether the JSON object raw has the key, with
// any value (null included).
func hasTopLevelKeyAuth(raw []byte, key string) bool {
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return false
	}
	_, ok := obj[key]
	return ok
}
