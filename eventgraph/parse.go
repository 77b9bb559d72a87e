package eventgraph

import (
	"fmt"
	"strconv"
)

// Event format limits (client-server API "Size limits"; PDU schemas in
// data/api/server-server/definitions/pdu_v*.yaml).
const (
	// MaxPDUSize is the largest canonical PDU, signatures included.
	MaxPDUSize = 65536
	// MaxEventTypeBytes and MaxStateKeyBytes bound type and state_key.
	MaxEventTypeBytes = 255
	MaxStateKeyBytes  = 255
	// MaxPrevEvents and MaxAuthEvents bound prev_events and auth_events.
	MaxPrevEvents = 20
	MaxAuthEvents = 10
)

// ParseEvent parses and validates a PDU received from another server (or a
// client-supplied one) for a room of version rv. It checks, in order:
//
//   - JSON: canonicalisable, strictly so from v6 (no floats, integers within
//     ±(2^53-1)); duplicate keys, bad UTF-8 and excessive nesting refused;
//   - size: the canonical PDU without `unsigned` is at most MaxPDUSize bytes.
//     `unsigned` is left out because servers relaying the event may change
//     it, and whether an event is valid must not depend on the path it took;
//   - schema: required keys present with the right JSON types;
//   - limits and grammar: type and state_key ≤ 255 bytes, sender a user ID
//     (historical grammar), room_id a room ID of rv's form, event IDs of rv's
//     form, at most 20 prev_events and 10 auth_events, depth in
//     [0, rv.MaxDepth]; from v12 m.room.create must have no room_id and every
//     other event must have one.
//
// From v3 the event ID is computed from the reference hash; in v1–v2 it is
// read from the event. A stray event_id in a v3+ PDU is not part of that
// format, but the redaction algorithm keeps it, so it is hashed and signed
// like any protected key, exactly as the spec's algorithm (and other
// servers) treat it: a relay that adds one only invalidates its copy. Hashes and
// signatures are not checked here: see VerifyEventSignatures and
// Event.CheckContentHash. Errors are *FormatError (or *JSONError), so
// errors.Is with ErrBadJSON, ErrTooLarge or ErrInvalidParam classifies them.
func ParseEvent(raw []byte, rv *RoomVersion) (*Event, error) {
	canon, err := AppendCanonicalJSON(make([]byte, 0, len(raw)), raw, rv.StrictCanonicalJSON)
	if err != nil {
		return nil, err
	}
	if jsonKind(canon) != '{' {
		return nil, badJSON("", "event is not a JSON object")
	}
	e, err := newEventFromCanonical(canon, canon, rv, "", true)
	if err != nil {
		return nil, err
	}
	if err := validateEvent(e); err != nil {
		return nil, err
	}
	if rv.EventIDs == EventIDFormatV1 {
		e.eventID = e.f.EventID
	} else {
		h, err := referenceHashOfCanonical(e.canon, rv)
		if err != nil {
			return nil, err
		}
		e.eventID = eventIDFromHash(h, rv)
	}
	return e, nil
}

// signedSize is the canonical size of the event without `unsigned`.
func signedSize(canon []byte) int {
	var buf [24]jmember
	ms, _ := splitObject(canon, buf[:0])
	for _, m := range ms {
		if string(m.key) == "unsigned" {
			// `,"unsigned":{…}` or `"unsigned":{…},` (unless it is alone).
			n := len(m.key) + 3 + len(m.val)
			if len(ms) > 1 {
				n++
			}
			return len(canon) - n
		}
	}
	return len(canon)
}

// validateEvent applies the format rules of ParseEvent to a decoded event.
// BuildEvent runs it too, so shoal never creates what it would refuse.
func validateEvent(e *Event) error {
	rv, f := e.version, &e.f
	if n := signedSize(e.canon); n > MaxPDUSize {
		return tooLarge("", fmt.Sprintf("canonical event is %d bytes, limit %d", n, MaxPDUSize))
	}
	required := []struct {
		bit  fieldSet
		name string
	}{
		{hasSender, "sender"}, {hasType, "type"}, {hasContent, "content"},
		{hasDepth, "depth"}, {hasOriginServerTS, "origin_server_ts"},
		{hasPrevEvents, "prev_events"}, {hasAuthEvents, "auth_events"},
		{hasHashes, "hashes"}, {hasSignatures, "signatures"},
	}
	for _, r := range required {
		if f.present&r.bit == 0 {
			return badJSON(r.name, "missing")
		}
	}
	if rv.EventIDs == EventIDFormatV1 && f.present&hasEventID == 0 {
		return badJSON("event_id", "missing (required in room versions 1 and 2)")
	}
	isCreate := f.Type == "m.room.create"
	switch {
	case rv.RoomIDFromCreateEvent && isCreate:
		if f.present&hasRoomID != 0 {
			return invalidParam("room_id", "m.room.create must not have a room_id in this room version", nil)
		}
	case f.present&hasRoomID == 0:
		return badJSON("room_id", "missing")
	}

	if len(f.Type) > MaxEventTypeBytes {
		return tooLarge("type", "longer than "+strconv.Itoa(MaxEventTypeBytes)+" bytes")
	}
	if f.StateKey != nil && len(*f.StateKey) > MaxStateKeyBytes {
		return tooLarge("state_key", "longer than "+strconv.Itoa(MaxStateKeyBytes)+" bytes")
	}
	if err := ValidateUserID(f.Sender); err != nil {
		return fieldErr("sender", err)
	}
	if f.present&hasRoomID != 0 {
		if err := ValidateRoomIDForVersion(f.RoomID, rv); err != nil {
			return fieldErr("room_id", err)
		}
	}
	if rv.EventIDs == EventIDFormatV1 {
		if err := ValidateEventID(f.EventID, rv); err != nil {
			return fieldErr("event_id", err)
		}
	}
	if f.Depth < 0 || f.Depth > rv.MaxDepth {
		return invalidParam("depth", fmt.Sprintf("%d outside [0, %d]", f.Depth, rv.MaxDepth), nil)
	}
	if len(f.prevIDs) > MaxPrevEvents {
		return badJSON("prev_events", fmt.Sprintf("%d entries, at most %d allowed", len(f.prevIDs), MaxPrevEvents))
	}
	if len(f.authIDs) > MaxAuthEvents {
		return badJSON("auth_events", fmt.Sprintf("%d entries, at most %d allowed", len(f.authIDs), MaxAuthEvents))
	}
	for _, id := range f.prevIDs {
		if err := ValidateEventID(id, rv); err != nil {
			return fieldErr("prev_events", err)
		}
	}
	for _, id := range f.authIDs {
		if err := ValidateEventID(id, rv); err != nil {
			return fieldErr("auth_events", err)
		}
	}
	if err := validateHashesAndSignatures(e.canon); err != nil {
		return err
	}
	return nil
}

// fieldErr re-labels an identifier error with the event key it came from,
// keeping its class.
func fieldErr(field string, err error) error {
	if fe, ok := err.(*FormatError); ok {
		c := *fe
		c.Field = field
		return &c
	}
	return invalidParam(field, "invalid", err)
}

// validateHashesAndSignatures checks the shapes the PDU schema gives them:
// hashes has a string sha256; signatures maps servers to objects of strings.
func validateHashesAndSignatures(canon []byte) error {
	var buf [24]jmember
	ms, _ := splitObject(canon, buf[:0])
	if _, ok := sha256HashString(ms); !ok {
		return badJSON("hashes", "no sha256 string")
	}
	sigs, ok := jget(ms, "signatures")
	if !ok {
		return badJSON("signatures", "missing")
	}
	var sbuf [4]jmember
	servers, ok := splitObject(sigs, sbuf[:0])
	if !ok {
		return badJSON("signatures", "not an object")
	}
	for _, s := range servers {
		var kbuf [4]jmember
		keys, ok := splitObject(s.val, kbuf[:0])
		if !ok {
			return badJSON("signatures", "entry for a server is not an object")
		}
		for _, k := range keys {
			if jsonKind(k.val) != '"' {
				return badJSON("signatures", "signature is not a string")
			}
		}
	}
	return nil
}
