package eventgraph

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
)

// Content and reference hashes (server-server API, "Calculating the content
// hash for an event" and "Calculating the reference hash for an event").
// Version-independent functions taking PDU bytes canonicalise leniently, so
// they work on events of every room version; those given a RoomVersion
// canonicalise as that version requires. Format checks belong to ParseEvent.

var (
	// ErrMissingContentHash: the event has no hashes.sha256 string.
	ErrMissingContentHash = errors.New("eventgraph: event has no sha256 content hash")
	// ErrContentHashMismatch: hashes.sha256 does not match the event. The
	// spec says to continue with the redacted event rather than drop it.
	ErrContentHashMismatch = errors.New("eventgraph: content hash does not match")
)

// appendContentHashPayload writes the canonical event without `unsigned`,
// `signatures` and `hashes`: the bytes the content hash covers.
func appendContentHashPayload(dst, canon []byte) ([]byte, error) {
	var buf [24]jmember
	ms, ok := splitObject(canon, buf[:0])
	if !ok {
		return dst, badJSON("", "event is not a JSON object")
	}
	return appendObject(dst, removeMembers(ms, "unsigned", "signatures", "hashes")), nil
}

func contentHashOfCanonical(canon []byte) ([32]byte, error) {
	var stack [2048]byte
	payload, err := appendContentHashPayload(stack[:0], canon)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(payload), nil
}

// ContentHash returns the SHA-256 content hash of the PDU JSON pdu.
func ContentHash(pdu []byte) ([32]byte, error) {
	canon, err := CanonicalJSONLenient(pdu)
	if err != nil {
		return [32]byte{}, fmt.Errorf("eventgraph: content hash: %w", err)
	}
	h, err := contentHashOfCanonical(canon)
	if err != nil {
		return h, fmt.Errorf("eventgraph: content hash: %w", err)
	}
	return h, nil
}

// AddContentHash computes the content hash of pdu and returns pdu as
// canonical JSON with hashes.sha256 set to it (other entries of `hashes`
// are kept).
func AddContentHash(pdu []byte) ([]byte, error) {
	canon, err := CanonicalJSONLenient(pdu)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: add content hash: %w", err)
	}
	out, err := appendWithContentHash(make([]byte, 0, len(canon)+64), canon)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: add content hash: %w", err)
	}
	return out, nil
}

func appendWithContentHash(dst, canon []byte) ([]byte, error) {
	h, err := contentHashOfCanonical(canon)
	if err != nil {
		return dst, err
	}
	var buf [24]jmember
	ms, _ := splitObject(canon, buf[:0])
	var hbuf [4]jmember
	var hms []jmember
	if old, ok := jget(ms, "hashes"); ok {
		if hms, ok = splitObject(old, hbuf[:0]); !ok {
			return dst, badJSON("hashes", "not an object")
		}
	}
	var val [48]byte
	v := append(val[:0], '"')
	v = AppendBase64(v, h[:])
	v = append(v, '"')
	hashes := appendObject(make([]byte, 0, 64), setMember(hms, "sha256", v))
	return appendObject(dst, setMember(ms, "hashes", hashes)), nil
}

// CheckContentHash verifies hashes.sha256 of pdu. It returns
// ErrMissingContentHash or ErrContentHashMismatch (both wrapped) on failure.
func CheckContentHash(pdu []byte) error {
	canon, err := CanonicalJSONLenient(pdu)
	if err != nil {
		return fmt.Errorf("eventgraph: check content hash: %w", err)
	}
	return checkContentHashCanonical(canon)
}

func checkContentHashCanonical(canon []byte) error {
	var buf [24]jmember
	ms, ok := splitObject(canon, buf[:0])
	if !ok {
		return fmt.Errorf("eventgraph: check content hash: %w", badJSON("", "event is not a JSON object"))
	}
	s, ok := sha256HashString(ms)
	if !ok {
		return ErrMissingContentHash
	}
	want, err := DecodeBase64(s)
	if err != nil {
		return fmt.Errorf("%w: hashes.sha256 is not base64", ErrContentHashMismatch)
	}
	return compareContentHash(canon, want)
}

// sha256HashString returns hashes.sha256 of the event members ms.
func sha256HashString(ms []jmember) (string, bool) {
	hashes, ok := jget(ms, "hashes")
	if !ok {
		return "", false
	}
	var hbuf [4]jmember
	hms, _ := splitObject(hashes, hbuf[:0])
	v, ok := jget(hms, "sha256")
	if !ok {
		return "", false
	}
	return decodeString(v)
}

func compareContentHash(canon, want []byte) error {
	got, err := contentHashOfCanonical(canon)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(got[:], want) != 1 {
		return ErrContentHashMismatch
	}
	return nil
}

// referenceHashOfCanonical hashes the redacted event without signatures and
// unsigned: the reference hash.
func referenceHashOfCanonical(canon []byte, rv *RoomVersion) ([32]byte, error) {
	var stack [2048]byte
	payload, err := appendRedacted(stack[:0], canon, rv, true)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(payload), nil
}

// ReferenceHash returns the SHA-256 reference hash of pdu under rv's
// redaction algorithm.
func ReferenceHash(pdu []byte, rv *RoomVersion) ([32]byte, error) {
	canon, err := CanonicalJSONForVersion(pdu, rv)
	if err != nil {
		return [32]byte{}, fmt.Errorf("eventgraph: reference hash: %w", err)
	}
	h, err := referenceHashOfCanonical(canon, rv)
	if err != nil {
		return h, fmt.Errorf("eventgraph: reference hash: %w", err)
	}
	return h, nil
}

// eventIDFromHash formats a reference hash as an event ID of rv's format.
func eventIDFromHash(h [32]byte, rv *RoomVersion) string {
	var buf [44]byte
	b := append(buf[:0], '$')
	if rv.EventIDs == EventIDFormatV3 {
		b = AppendBase64(b, h[:])
	} else {
		b = AppendBase64URL(b, h[:])
	}
	return string(b)
}

// ComputeEventID returns the ID of the event pdu in a room of version rv:
// from v3 "$" + base64 of the reference hash (standard alphabet in v3,
// URL-safe from v4); in v1 and v2 the event's own event_id.
func ComputeEventID(pdu []byte, rv *RoomVersion) (string, error) {
	if rv.EventIDs == EventIDFormatV1 {
		canon, err := CanonicalJSONForVersion(pdu, rv)
		if err != nil {
			return "", fmt.Errorf("eventgraph: event ID: %w", err)
		}
		var buf [24]jmember
		ms, _ := splitObject(canon, buf[:0])
		v, ok := jget(ms, "event_id")
		if !ok {
			return "", fmt.Errorf("eventgraph: event ID: %w", badJSON("event_id", "missing (required in room versions 1 and 2)"))
		}
		id, ok := decodeString(v)
		if !ok {
			return "", fmt.Errorf("eventgraph: event ID: %w", badJSON("event_id", "not a string"))
		}
		return id, nil
	}
	h, err := ReferenceHash(pdu, rv)
	if err != nil {
		return "", err
	}
	return eventIDFromHash(h, rv), nil
}

// RoomIDFromCreateEventID gives the room ID of a room whose ID is derived
// from its create event (v12+, MSC4291): the create event's ID with the
// sigil `!` instead of `$`.
func RoomIDFromCreateEventID(createEventID string) (string, error) {
	if !strings.HasPrefix(createEventID, "$") || len(createEventID) < 2 {
		return "", invalidParam("event_id", "not an event ID", nil)
	}
	return "!" + createEventID[1:], nil
}
