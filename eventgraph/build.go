package eventgraph

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"
)

// ProtoEvent is what shoal decides about a new event before it is hashed,
// signed and named. The caller chooses prev_events, auth_events (see
// SelectAuthEvents), depth and the timestamp; this package has no clock.
type ProtoEvent struct {
	// RoomID is required, except on m.room.create from v12, where it must be
	// empty (the room ID is derived from the create event).
	RoomID   string
	Sender   string
	Type     string
	StateKey *string // nil for a non-state event
	// Content is a JSON object; nil means {}. It must be canonicalisable
	// strictly (no floats), whatever the room version.
	Content json.RawMessage
	// Redacts is the target of an m.room.redaction: written top-level,
	// and from v11 also (authoritatively) as content.redacts.
	Redacts    string
	PrevEvents []string
	AuthEvents []string
	// ReferenceHashes holds, for room versions 1–2 only, the reference hash
	// (Event.ReferenceHash) of every event in PrevEvents and AuthEvents, which
	// that format lists beside the IDs.
	ReferenceHashes map[string][32]byte
	Depth           int64
	OriginServerTS  int64
	// Unsigned is an optional JSON object; it is not hashed or signed.
	Unsigned json.RawMessage
}

// BuildOption configures BuildEvent.
type BuildOption func(*buildConfig)

type buildConfig struct {
	rand io.Reader
}

// WithRandom supplies the randomness for "$opaque:origin" event IDs in room
// versions 1 and 2 (crypto/rand.Reader in production). BuildEvent fails for
// those versions without it, rather than use global state tests cannot
// control.
func WithRandom(r io.Reader) BuildOption {
	return func(c *buildConfig) { c.rand = r }
}

// BuildEvent creates shoal's own event: it writes the PDU in rv's shape
// (prev_events/auth_events as IDs, or [id, {sha256}] pairs in v1–v2; origin
// top-level before v11, where it is still a protected key), adds the content
// hash, signs the redacted form as origin with keyID, computes the event ID
// and validates the result with the same rules as ParseEvent.
func BuildEvent(proto ProtoEvent, rv *RoomVersion, origin, keyID string, priv ed25519.PrivateKey, opts ...BuildOption) (*Event, error) {
	e, err := buildEvent(&proto, rv, origin, keyID, priv, opts)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: build %s event: %w", proto.Type, err)
	}
	return e, nil
}

func buildEvent(p *ProtoEvent, rv *RoomVersion, origin, keyID string, priv ed25519.PrivateKey, opts []BuildOption) (*Event, error) {
	var cfg buildConfig
	for _, o := range opts {
		o(&cfg)
	}
	if err := checkSignerNames(origin, keyID); err != nil {
		return nil, err
	}
	if len(priv) != ed25519.PrivateKeySize {
		return nil, invalidParam("signing key", "not an ed25519 private key", nil)
	}
	content := jsonEmptyObject
	if p.Content != nil {
		c, err := CanonicalJSON(p.Content)
		if err != nil {
			return nil, fmt.Errorf("content: %w", err)
		}
		if jsonKind(c) != '{' {
			return nil, badJSON("content", "not an object")
		}
		content = c
	}
	// One arena for every value; sub-slices stay valid if it grows, since
	// they keep the old array alive.
	arena := make([]byte, 0, 512)
	str := func(field, s string) ([]byte, error) {
		if !utf8.ValidString(s) {
			return nil, invalidParam(field, "not valid UTF-8", nil)
		}
		start := len(arena)
		arena = appendCanonicalString(arena, s)
		return arena[start:], nil
	}

	var topRedacts []byte
	if p.Redacts != "" {
		if p.Type != "m.room.redaction" {
			return nil, invalidParam("redacts", "only m.room.redaction redacts", nil)
		}
		r, err := str("redacts", p.Redacts)
		if err != nil {
			return nil, err
		}
		if rv.RedactsInContent {
			var cbuf [16]jmember
			cms, _ := splitObject(content, cbuf[:0])
			if have, ok := jget(cms, "redacts"); ok && string(have) != string(r) {
				return nil, invalidParam("redacts", "differs from content.redacts", nil)
			}
			content = appendObject(make([]byte, 0, len(content)+len(r)+12), setMember(cms, "redacts", r))
		}
		// From v11 the redaction algorithm keeps content.redacts and the
		// top-level key means nothing; it is still written so that servers
		// which read only it (Dendrite 0.13) apply the redaction, as
		// Dendrite itself does.
		topRedacts = r
	}

	var eventID string
	if rv.EventIDs == EventIDFormatV1 {
		if cfg.rand == nil {
			return nil, invalidParam("event_id", "room versions 1 and 2 need WithRandom to name events", nil)
		}
		var b [18]byte
		if _, err := io.ReadFull(cfg.rand, b[:]); err != nil {
			return nil, fmt.Errorf("event ID randomness: %w", err)
		}
		eventID = "$" + EncodeBase64URL(b[:]) + ":" + origin
	}

	var err error
	var mbuf [16]jmember
	ms := mbuf[:0]
	add := func(key string, val []byte) { ms = append(ms, jmember{key: []byte(key), val: val}) }
	var authV, prevV []byte
	if arena, authV, err = appendRefs(arena, "auth_events", p.AuthEvents, p.ReferenceHashes, rv); err != nil {
		return nil, err
	}
	if arena, prevV, err = appendRefs(arena, "prev_events", p.PrevEvents, p.ReferenceHashes, rv); err != nil {
		return nil, err
	}
	add("auth_events", authV)
	add("content", content)
	start := len(arena)
	arena = strconv.AppendInt(arena, p.Depth, 10)
	add("depth", arena[start:])
	if eventID != "" {
		v, err := str("event_id", eventID)
		if err != nil {
			return nil, err
		}
		add("event_id", v)
	}
	if rv.Redaction < RedactionV11 {
		v, err := str("origin", origin)
		if err != nil {
			return nil, err
		}
		add("origin", v)
	}
	start = len(arena)
	arena = strconv.AppendInt(arena, p.OriginServerTS, 10)
	add("origin_server_ts", arena[start:])
	add("prev_events", prevV)
	if topRedacts != nil {
		add("redacts", topRedacts)
	}
	for _, kv := range []struct{ key, val string }{{"room_id", p.RoomID}, {"sender", p.Sender}} {
		if kv.key == "room_id" && kv.val == "" {
			continue // validateEvent decides whether that is allowed
		}
		v, err := str(kv.key, kv.val)
		if err != nil {
			return nil, err
		}
		add(kv.key, v)
	}
	if p.StateKey != nil {
		v, err := str("state_key", *p.StateKey)
		if err != nil {
			return nil, err
		}
		add("state_key", v)
	}
	v, err := str("type", p.Type)
	if err != nil {
		return nil, err
	}
	add("type", v)

	// The members so far are exactly what the content hash covers.
	var stack [2048]byte
	hash := sha256.Sum256(appendObject(stack[:0], ms))
	start = len(arena)
	arena = append(arena, `{"sha256":"`...)
	arena = AppendBase64(arena, hash[:])
	arena = append(arena, `"}`...)
	ms = setMember(ms, "hashes", arena[start:])
	if p.Unsigned != nil {
		u, err := CanonicalJSONLenient(p.Unsigned)
		if err != nil {
			return nil, fmt.Errorf("unsigned: %w", err)
		}
		if jsonKind(u) != '{' {
			return nil, badJSON("unsigned", "not an object")
		}
		ms = setMember(ms, "unsigned", u)
	}
	unsignedEvent := appendObject(make([]byte, 0, len(arena)+len(content)+256), ms)

	var ref [32]byte
	canon, err := appendSignedEvent(make([]byte, 0, len(unsignedEvent)+160), unsignedEvent, rv, origin, keyID, priv, &ref)
	if err != nil {
		return nil, err
	}
	if rv.EventIDs != EventIDFormatV1 {
		eventID = eventIDFromHash(ref, rv)
	}
	e, err := newEventFromCanonical(canon, canon, rv, eventID, true)
	if err != nil {
		return nil, err
	}
	if err := validateEvent(e); err != nil {
		return nil, err
	}
	return e, nil
}

// appendRefs writes prev_events/auth_events in rv's shape into the arena
// and returns the value's sub-slice.
func appendRefs(arena []byte, field string, ids []string, hashes map[string][32]byte, rv *RoomVersion) ([]byte, []byte, error) {
	start := len(arena)
	arena = append(arena, '[')
	for i, id := range ids {
		if !utf8.ValidString(id) {
			return arena, nil, invalidParam(field, "event ID is not valid UTF-8", nil)
		}
		if i > 0 {
			arena = append(arena, ',')
		}
		if rv.EventIDs != EventIDFormatV1 {
			arena = appendCanonicalString(arena, id)
			continue
		}
		h, ok := hashes[id]
		if !ok {
			return arena, nil, invalidParam(field, "no reference hash for "+id+" (needed in room versions 1 and 2)", nil)
		}
		arena = append(arena, '[')
		arena = appendCanonicalString(arena, id)
		arena = append(arena, `,{"sha256":"`...)
		arena = AppendBase64(arena, h[:])
		arena = append(arena, `"}]`...)
	}
	arena = append(arena, ']')
	return arena, arena[start:], nil
}
