package eventgraph

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
)

// Signing JSON (appendices, "Signing JSON") and signing events (server-server
// API, "Signing Events").

var (
	// ErrNoSignature: the object carries no signature from the required
	// server (or key).
	ErrNoSignature = errors.New("eventgraph: signature missing")
	// ErrBadSignature: a signature is malformed or does not verify.
	ErrBadSignature = errors.New("eventgraph: signature invalid")
)

// SignJSON signs the JSON object obj as serverName with the key keyID and
// returns it as canonical JSON with the signature merged into any existing
// `signatures` (`unsigned` is kept but not signed). Numbers are handled
// leniently so that objects carrying old-room events (federation request
// bodies) can be signed too.
func SignJSON(obj []byte, serverName, keyID string, priv ed25519.PrivateKey) ([]byte, error) {
	if err := checkSignerNames(serverName, keyID); err != nil {
		return nil, err
	}
	canon, err := CanonicalJSONLenient(obj)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: sign JSON: %w", err)
	}
	var buf, pbuf [24]jmember
	ms, ok := splitObject(canon, buf[:0])
	if !ok {
		return nil, fmt.Errorf("eventgraph: sign JSON: %w", badJSON("", "not a JSON object"))
	}
	payload := appendObject(make([]byte, 0, len(canon)), removeMembers(append(pbuf[:0], ms...), "signatures", "unsigned"))
	sig := ed25519.Sign(priv, payload)
	out, err := appendWithSignature(payload[:0], ms, serverName, keyID, sig)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: sign JSON: %w", err)
	}
	return out, nil
}

// VerifyJSON checks the signature of serverName under keyID on the JSON
// object obj. It fails with ErrNoSignature if there is none and
// ErrBadSignature if it does not verify.
func VerifyJSON(obj []byte, serverName, keyID string, pub ed25519.PublicKey) error {
	canon, err := CanonicalJSONLenient(obj)
	if err != nil {
		return fmt.Errorf("eventgraph: verify JSON: %w", err)
	}
	var buf, pbuf [24]jmember
	ms, ok := splitObject(canon, buf[:0])
	if !ok {
		return fmt.Errorf("eventgraph: verify JSON: %w", badJSON("", "not a JSON object"))
	}
	sigs, err := signaturesOf(ms)
	if err != nil {
		return fmt.Errorf("eventgraph: verify JSON: %w", err)
	}
	b64, ok := sigs[serverName][keyID]
	if !ok {
		return fmt.Errorf("%w: no %s signature from %s", ErrNoSignature, keyID, serverName)
	}
	payload := appendObject(make([]byte, 0, len(canon)), removeMembers(append(pbuf[:0], ms...), "signatures", "unsigned"))
	return verifyOne(pub, payload, b64, serverName, keyID)
}

func verifyOne(pub ed25519.PublicKey, payload []byte, b64, serverName, keyID string) error {
	sig, err := DecodeBase64(b64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: %s %s: malformed signature", ErrBadSignature, serverName, keyID)
	}
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: %s %s: public key is %d bytes", ErrBadSignature, serverName, keyID, len(pub))
	}
	if !ed25519.Verify(pub, payload, sig) {
		return fmt.Errorf("%w: %s %s: does not verify", ErrBadSignature, serverName, keyID)
	}
	return nil
}

// checkSignerNames refuses names that could not be object keys without
// escaping; no valid server name or key ID needs any.
func checkSignerNames(serverName, keyID string) error {
	if serverName == "" || needsEscape(serverName) {
		return invalidParam("server_name", fmt.Sprintf("%q is not usable as a signer", serverName), nil)
	}
	if keyID == "" || needsEscape(keyID) {
		return invalidParam("key_id", fmt.Sprintf("%q is not usable as a key ID", keyID), nil)
	}
	return nil
}

// signaturesOf decodes the `signatures` member of ms (absent → empty).
func signaturesOf(ms []jmember) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	v, ok := jget(ms, "signatures")
	if !ok {
		return out, nil
	}
	var sbuf [4]jmember
	servers, ok := splitObject(v, sbuf[:0])
	if !ok {
		return nil, badJSON("signatures", "not an object")
	}
	for _, s := range servers {
		name, _ := decodeString(quoteRaw(s.key))
		var kbuf [4]jmember
		keys, ok := splitObject(s.val, kbuf[:0])
		if !ok {
			return nil, badJSON("signatures", "entry for "+name+" is not an object")
		}
		m := make(map[string]string, len(keys))
		for _, k := range keys {
			id, _ := decodeString(quoteRaw(k.key))
			sig, ok := decodeString(k.val)
			if !ok {
				return nil, badJSON("signatures", "signature "+name+" "+id+" is not a string")
			}
			m[id] = sig
		}
		out[name] = m
	}
	return out, nil
}

// quoteRaw turns a raw member key back into a JSON string.
func quoteRaw(raw []byte) []byte {
	q := make([]byte, 0, len(raw)+2)
	return append(append(append(q, '"'), raw...), '"')
}

// appendWithSignature writes the object ms with sig added as
// signatures[serverName][keyID], keeping every other signature.
func appendWithSignature(dst []byte, ms []jmember, serverName, keyID string, sig []byte) ([]byte, error) {
	var sbuf, kbuf [4]jmember
	var servers, keys []jmember
	if v, ok := jget(ms, "signatures"); ok {
		if servers, ok = splitObject(v, sbuf[:0]); !ok {
			return dst, badJSON("signatures", "not an object")
		}
		for _, s := range servers {
			if compareKey(s.key, serverName) == 0 {
				if keys, ok = splitObject(s.val, kbuf[:0]); !ok {
					return dst, badJSON("signatures", "entry for "+serverName+" is not an object")
				}
			}
		}
	}
	var vbuf [96]byte
	val := append(vbuf[:0], '"')
	val = AppendBase64(val, sig)
	val = append(val, '"')
	keys = setMember(keys, keyID, val)
	serverObj := appendObject(make([]byte, 0, 128), keys)
	servers = setMember(servers, serverName, serverObj)
	sigObj := appendObject(make([]byte, 0, 128*len(servers)), servers)
	var mbuf [24]jmember
	return appendObject(dst, setMember(append(mbuf[:0], ms...), "signatures", sigObj)), nil
}

// SignEvent adds serverName's signature to the PDU pdu of a room of version
// rv. The signature covers the redacted event (so it survives redaction),
// which includes hashes: add the content hash first (AddContentHash) when
// creating an event. The result is canonical JSON.
func SignEvent(pdu []byte, rv *RoomVersion, serverName, keyID string, priv ed25519.PrivateKey) ([]byte, error) {
	if err := checkSignerNames(serverName, keyID); err != nil {
		return nil, err
	}
	canon, err := CanonicalJSONForVersion(pdu, rv)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: sign event: %w", err)
	}
	out, err := appendSignedEvent(make([]byte, 0, len(canon)+128), canon, rv, serverName, keyID, priv, nil)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: sign event: %w", err)
	}
	return out, nil
}

// appendSignedEvent signs the canonical event canon and writes it with the
// signature merged in. If refHash is not nil it receives the reference hash,
// which is computed over the very bytes that are signed.
func appendSignedEvent(dst, canon []byte, rv *RoomVersion, serverName, keyID string, priv ed25519.PrivateKey, refHash *[32]byte) ([]byte, error) {
	var stack [2048]byte
	payload, err := appendRedacted(stack[:0], canon, rv, true)
	if err != nil {
		return dst, err
	}
	if refHash != nil {
		*refHash = sha256.Sum256(payload)
	}
	sig := ed25519.Sign(priv, payload)
	var buf [24]jmember
	ms, _ := splitObject(canon, buf[:0])
	return appendWithSignature(dst, ms, serverName, keyID, sig)
}

// RequiredSignatures lists the servers whose signatures an event needs
// (server-server API, "Validating hashes and signatures on received
// events"): the sender's server; in v1–v2 also the server in the event ID;
// and from v8 (restricted joins), on m.room.member events of any
// membership, the server of content.join_authorised_via_users_server, which
// the auth rules require to have signed the event (the auth code leaves this
// rule to the signature layer). That key naming no server is an error.
func RequiredSignatures(e *Event) ([]string, error) {
	sender, ok := idDomain(e.Sender())
	if !ok {
		return nil, invalidParam("sender", "no server name in "+e.Sender(), nil)
	}
	servers := []string{sender}
	add := func(s string) {
		for _, have := range servers {
			if have == s {
				return
			}
		}
		servers = append(servers, s)
	}
	if e.version.EventIDDomainSignature {
		if d, ok := idDomain(e.EventID()); ok {
			add(d)
		}
	}
	if e.version.Restricted && e.Type() == "m.room.member" {
		var buf [8]jmember
		if ms, ok := splitObject(e.f.Content, buf[:0]); ok {
			if v, ok := jget(ms, "join_authorised_via_users_server"); ok {
				// Present but naming no server (not a string, no domain):
				// nobody can have signed for it, so the event fails.
				u, _ := decodeString(v)
				d, ok := idDomain(u)
				if !ok {
					return nil, invalidParam("content.join_authorised_via_users_server", "not a user ID", nil)
				}
				add(d)
			}
		}
	}
	return servers, nil
}

// VerifyEventSignatures checks the signatures on e against the keys the
// caller holds. For every server RequiredSignatures names, at least one
// ed25519 signature must come from a key that keys knows and that is valid
// for the event's timestamp (KeyValidForEvent), and every such signature
// must verify. Signatures from unknown keys or other algorithms are skipped,
// as the spec says. Errors wrap ErrNoSignature or ErrBadSignature.
func VerifyEventSignatures(e *Event, keys KeyLookup) error {
	servers, err := RequiredSignatures(e)
	if err != nil {
		return fmt.Errorf("eventgraph: verify event %s: %w", e.eventID, err)
	}
	var buf [24]jmember
	ms, ok := splitObject(e.canon, buf[:0])
	if !ok {
		return fmt.Errorf("eventgraph: verify event %s: %w", e.eventID, badJSON("", "not a JSON object"))
	}
	sigs, err := signaturesOf(ms)
	if err != nil {
		return fmt.Errorf("eventgraph: verify event %s: %w", e.eventID, err)
	}
	var stack [2048]byte
	payload, err := appendRedacted(stack[:0], e.canon, e.version, true)
	if err != nil {
		return fmt.Errorf("eventgraph: verify event %s: %w", e.eventID, err)
	}
	for _, server := range servers {
		verified := 0
		for keyID, b64 := range sigs[server] {
			if !strings.HasPrefix(keyID, KeyAlgorithmEd25519+":") {
				continue
			}
			k, ok := keys(server, keyID)
			if !ok || !KeyValidForEvent(e.version, k.ValidUntilTS, e.OriginServerTS()) {
				continue
			}
			if err := verifyOne(k.Key, payload, b64, server, keyID); err != nil {
				return fmt.Errorf("eventgraph: verify event %s: %w", e.eventID, err)
			}
			verified++
		}
		if verified == 0 {
			return fmt.Errorf("eventgraph: verify event %s: %w: none from a known, valid key of %s", e.eventID, ErrNoSignature, server)
		}
	}
	return nil
}
