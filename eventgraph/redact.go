package eventgraph

import "fmt"

// Redaction strips an event down to the keys the protocol needs
// (client-server API "Redactions"; the lists are per room version, fragments
// v1/v6/v9/v11-redactions and rooms/v8.md). The same algorithm feeds event
// signing and the reference hash, so it must be exact byte for byte.

// Redact applies rv's redaction algorithm to the PDU JSON pdu and returns the
// redacted PDU as canonical JSON. `unsigned` is removed like every other key
// not on the list; `signatures` and `hashes` are kept.
func Redact(pdu []byte, rv *RoomVersion) ([]byte, error) {
	canon, err := AppendCanonicalJSON(make([]byte, 0, len(pdu)), pdu, rv.StrictCanonicalJSON)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: redact: %w", err)
	}
	out, err := appendRedacted(make([]byte, 0, len(canon)), canon, rv, false)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: redact: %w", err)
	}
	return out, nil
}

// keepTopLevel reports whether the redaction algorithm alg keeps the
// top-level key.
func keepTopLevel(key []byte, alg RedactionAlgorithm) bool {
	switch string(key) {
	case "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
		"signatures", "depth", "prev_events", "auth_events", "origin_server_ts":
		return true
	case "origin", "membership", "prev_state":
		// MSC2176 (v11) stopped protecting these.
		return alg < RedactionV11
	}
	return false
}

// keepContentKey reports whether the content key of an event of type evType
// survives redaction under rv. m.room.member's third_party_invite (v11+) is
// handled by the caller, since only part of it survives.
func keepContentKey(evType string, key []byte, rv *RoomVersion) bool {
	alg := rv.Redaction
	k := string(key)
	switch evType {
	case "m.room.member":
		return k == "membership" || (alg >= RedactionV9 && k == "join_authorised_via_users_server")
	case "m.room.create":
		return alg >= RedactionV11 || k == "creator"
	case "m.room.join_rules":
		return k == "join_rule" || (alg >= RedactionV8 && k == "allow")
	case "m.room.power_levels":
		switch k {
		case "ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default":
			return true
		case "invite":
			return alg >= RedactionV11
		}
	case "m.room.aliases":
		return alg < RedactionV6 && k == "aliases"
	case "m.room.history_visibility":
		return k == "history_visibility"
	case "m.room.redaction":
		return alg >= RedactionV11 && k == "redacts"
	case "m.room.server_acl":
		return rv.ServerACLProtected && (k == "allow" || k == "deny" || k == "allow_ip_literals")
	}
	return false
}

var jsonEmptyObject = []byte("{}")

// appendRedacted writes the redacted form of the canonical PDU canon. With
// forSigning it also leaves out `signatures`, giving the bytes that are both
// signed and hashed into the reference hash. A missing or non-object
// `content` becomes {}, since every redacted event has a content object.
func appendRedacted(dst, canon []byte, rv *RoomVersion, forSigning bool) ([]byte, error) {
	var buf [24]jmember
	ms, ok := splitObject(canon, buf[:0])
	if !ok {
		return dst, badJSON("", "event is not a JSON object")
	}
	var evType string
	if v, ok := jget(ms, "type"); ok {
		evType, _ = decodeString(v)
	}
	dst = append(dst, '{')
	n := 0
	wroteContent := false
	writeContent := func(content []byte) error {
		if n > 0 {
			dst = append(dst, ',')
		}
		n++
		dst = append(dst, `"content":`...)
		var err error
		dst, err = appendRedactedContent(dst, content, evType, rv)
		wroteContent = true
		return err
	}
	for _, m := range ms {
		if !keepTopLevel(m.key, rv.Redaction) || (forSigning && string(m.key) == "signatures") {
			continue
		}
		if string(m.key) == "content" {
			if err := writeContent(m.val); err != nil {
				return dst, err
			}
			continue
		}
		if !wroteContent && string(m.key) > "content" {
			if err := writeContent(jsonEmptyObject); err != nil {
				return dst, err
			}
		}
		if n > 0 {
			dst = append(dst, ',')
		}
		n++
		dst = appendMember(dst, m)
	}
	if !wroteContent {
		if err := writeContent(jsonEmptyObject); err != nil {
			return dst, err
		}
	}
	return append(dst, '}'), nil
}

func appendRedactedContent(dst, content []byte, evType string, rv *RoomVersion) ([]byte, error) {
	if jsonKind(content) != '{' {
		return append(dst, jsonEmptyObject...), nil
	}
	if evType == "m.room.create" && rv.Redaction >= RedactionV11 {
		return append(dst, content...), nil
	}
	var buf [16]jmember
	ms, ok := splitObject(content, buf[:0])
	if !ok {
		return dst, badJSON("content", "malformed object")
	}
	dst = append(dst, '{')
	n := 0
	for _, m := range ms {
		val := m.val
		switch {
		case keepContentKey(evType, m.key, rv):
		case rv.Redaction >= RedactionV11 && evType == "m.room.member" && string(m.key) == "third_party_invite":
			// v11 keeps only third_party_invite.signed (the part the auth
			// rules verify); without it the key goes entirely.
			var tbuf [8]jmember
			tms, ok := splitObject(m.val, tbuf[:0])
			if !ok {
				continue
			}
			signed, ok := jget(tms, "signed")
			if !ok {
				continue
			}
			val = appendObject(make([]byte, 0, len(signed)+12), []jmember{{key: []byte("signed"), val: signed}})
		default:
			continue
		}
		if n > 0 {
			dst = append(dst, ',')
		}
		n++
		dst = appendMember(dst, jmember{key: m.key, val: val})
	}
	return append(dst, '}'), nil
}
