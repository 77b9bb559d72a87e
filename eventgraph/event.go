package eventgraph

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// StateKey identifies one piece of room state: an event type and a state key.
type StateKey struct {
	Type     string
	StateKey string
}

func (k StateKey) String() string { return k.Type + "|" + k.StateKey }

// StateMap is room state: for every (type, state_key) the ID of the event that holds it.
type StateMap map[StateKey]string

// Clone returns a copy of m.
func (m StateMap) Clone() StateMap {
	c := make(StateMap, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Event is a parsed, immutable PDU of a known room version. Its accessors are
// cheap: the fields are decoded once, at construction.
//
// Events come from NewEventFromTrustedJSON (shoal's own storage), ParseEvent
// (untrusted input, fully validated) or BuildEvent (shoal's new events).
// Nothing hands out a way to change one; WithUnsigned and Redact return
// copies.
type Event struct {
	version *RoomVersion
	eventID string
	raw     []byte // the PDU JSON as given to the constructor
	canon   []byte // canonical form of the PDU; may share raw
	f       eventFields
}

// eventFields are the top-level PDU keys shoal reads. prev_events and
// auth_events have two shapes (v1–v2: [id, hashes] pairs; v3+: IDs). The raw
// values are canonical JSON and slices of Event.canon.
type eventFields struct {
	EventID        string          `json:"event_id,omitempty"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender"`
	Type           string          `json:"type"`
	StateKey       *string         `json:"state_key,omitempty"`
	Content        json.RawMessage `json:"content"`
	Redacts        string          `json:"redacts,omitempty"`
	Depth          int64           `json:"depth"`
	OriginServerTS int64           `json:"origin_server_ts"`
	Origin         string          `json:"origin,omitempty"`
	PrevEvents     json.RawMessage `json:"prev_events"`
	AuthEvents     json.RawMessage `json:"auth_events"`
	Hashes         json.RawMessage `json:"hashes,omitempty"`
	Signatures     json.RawMessage `json:"signatures,omitempty"`
	Unsigned       json.RawMessage `json:"unsigned,omitempty"`

	prevIDs []string
	authIDs []string

	contentRedacts string // content.redacts, if a string
	present        fieldSet
}

// fieldSet records which top-level keys an event has.
type fieldSet uint32

const (
	hasEventID fieldSet = 1 << iota
	hasRoomID
	hasSender
	hasType
	hasStateKey
	hasContent
	hasRedacts
	hasDepth
	hasOriginServerTS
	hasPrevEvents
	hasAuthEvents
	hasHashes
	hasSignatures
	hasUnsigned
)

// NewEventFromTrustedJSON wraps a PDU that shoal itself stored or built
// earlier, with its known event ID. It decodes the fields but does not
// re-check hashes, signatures or format limits: never give it peer or
// client input.
func NewEventFromTrustedJSON(raw []byte, rv *RoomVersion, eventID string) (*Event, error) {
	canon, err := AppendCanonicalJSON(make([]byte, 0, len(raw)), raw, false)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: decode event %s: %w", eventID, err)
	}
	if string(canon) == string(raw) {
		canon = raw // already canonical, as shoal stores events: share the bytes
	}
	e, err := newEventFromCanonical(raw, canon, rv, eventID, false)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: decode event %s: %w", eventID, err)
	}
	return e, nil
}

// newEventFromCanonical decodes the fields of the canonical PDU canon. With
// strict, the key types are checked as the PDU schema has them (null is
// not "absent"); without, decoding is as forgiving as encoding/json was.
func newEventFromCanonical(raw, canon []byte, rv *RoomVersion, eventID string, strict bool) (*Event, error) {
	e := &Event{version: rv, eventID: eventID, raw: raw, canon: canon}
	if err := decodeEventFields(canon, rv, strict, &e.f); err != nil {
		return nil, err
	}
	if e.eventID == "" {
		e.eventID = e.f.EventID
	}
	return e, nil
}

// decodeEventFields fills f from the canonical PDU. Only exact key names
// count: encoding/json would also match "Sender" for "sender", which would
// let an event carry a field other servers do not see.
func decodeEventFields(canon []byte, rv *RoomVersion, strict bool, f *eventFields) error {
	var buf [24]jmember
	ms, ok := splitObject(canon, buf[:0])
	if !ok {
		return badJSON("", "event is not a JSON object")
	}
	for _, m := range ms {
		if !strict && string(m.val) == "null" {
			continue // encoding/json treats null as absent
		}
		var err error
		switch string(m.key) {
		case "event_id":
			f.EventID, err = fieldString("event_id", m.val)
			f.present |= hasEventID
		case "room_id":
			f.RoomID, err = fieldString("room_id", m.val)
			f.present |= hasRoomID
		case "sender":
			f.Sender, err = fieldString("sender", m.val)
			f.present |= hasSender
		case "type":
			f.Type, err = fieldString("type", m.val)
			f.present |= hasType
		case "state_key":
			var s string
			s, err = fieldString("state_key", m.val)
			f.StateKey = &s
			f.present |= hasStateKey
		case "content":
			// Trusted decoding keeps any JSON here, as encoding/json did:
			// the auth rules must see (and reject) malformed content.
			if strict && jsonKind(m.val) != '{' {
				err = badJSON("content", "not an object")
			}
			f.Content = m.val
			f.present |= hasContent
		case "redacts":
			// A top-level redacts is part of the format only before v11;
			// later it is an unprotected extra key of no meaning.
			if s, ok := decodeString(m.val); ok {
				f.Redacts = s
				f.present |= hasRedacts
			} else if !rv.RedactsInContent {
				err = badJSON("redacts", "not a string")
			}
		case "depth":
			f.Depth, err = fieldInt("depth", m.val)
			f.present |= hasDepth
		case "origin_server_ts":
			f.OriginServerTS, err = fieldInt("origin_server_ts", m.val)
			f.present |= hasOriginServerTS
		case "origin":
			f.Origin, _ = decodeString(m.val) // deprecated and unchecked: ignore other types
		case "prev_events":
			f.PrevEvents = m.val
			f.prevIDs, err = decodeRefsCanonical("prev_events", m.val, rv, strict)
			f.present |= hasPrevEvents
		case "auth_events":
			f.AuthEvents = m.val
			f.authIDs, err = decodeRefsCanonical("auth_events", m.val, rv, strict)
			f.present |= hasAuthEvents
		case "hashes":
			err = fieldObject("hashes", m.val, strict)
			f.Hashes = m.val
			f.present |= hasHashes
		case "signatures":
			err = fieldObject("signatures", m.val, strict)
			f.Signatures = m.val
			f.present |= hasSignatures
		case "unsigned":
			err = fieldObject("unsigned", m.val, strict)
			f.Unsigned = m.val
			f.present |= hasUnsigned
		}
		if err != nil {
			return err
		}
	}
	if f.Type == "m.room.redaction" && len(f.Content) > 0 {
		var cbuf [8]jmember
		if cms, ok := splitObject(f.Content, cbuf[:0]); ok {
			if v, ok := jget(cms, "redacts"); ok {
				f.contentRedacts, _ = decodeString(v)
			}
		}
	}
	return nil
}

func fieldString(field string, val []byte) (string, error) {
	s, ok := decodeString(val)
	if !ok {
		return "", badJSON(field, "not a string")
	}
	return s, nil
}

func fieldInt(field string, val []byte) (int64, error) {
	n, ok := decodeInt(val)
	if !ok {
		return 0, badJSON(field, "not an integer in the int64 range")
	}
	return n, nil
}

func fieldObject(field string, val []byte, strict bool) error {
	if strict && jsonKind(val) != '{' {
		return badJSON(field, "not an object")
	}
	return nil
}

// decodeRefsCanonical reads prev_events/auth_events: a list of IDs (v3+) or
// of [id, {hashes}] pairs (v1–v2). strict requires exactly that shape;
// otherwise a pair only needs a leading string ID.
func decodeRefsCanonical(field string, val []byte, rv *RoomVersion, strict bool) ([]string, error) {
	var buf [20][]byte
	items, ok := splitArray(val, buf[:0])
	if !ok {
		return nil, badJSON(field, "not an array")
	}
	ids := make([]string, 0, len(items))
	for _, it := range items {
		if rv.EventIDs == EventIDFormatV1 {
			var pbuf [2][]byte
			pair, ok := splitArray(it, pbuf[:0])
			if !ok || len(pair) == 0 || (strict && (len(pair) != 2 || jsonKind(pair[1]) != '{')) {
				return nil, badJSON(field, "event reference is not an [id, hashes] pair")
			}
			it = pair[0]
		}
		id, ok := decodeString(it)
		if !ok {
			return nil, badJSON(field, "event ID is not a string")
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// decodeEventRefs reads prev_events/auth_events from arbitrary JSON: a list
// of IDs (v3+) or of [id, hashes] pairs (v1–v2).
func decodeEventRefs(raw json.RawMessage, rv *RoomVersion) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	canon, err := CanonicalJSONLenient(raw)
	if err != nil {
		return nil, err
	}
	return decodeRefsCanonical("event references", canon, rv, false)
}

// Version is the room version the event was parsed under.
func (e *Event) Version() *RoomVersion { return e.version }

// EventID is the event's ID ("$…").
func (e *Event) EventID() string { return e.eventID }

// RoomID is the room the event belongs to. For a v12 create event, which
// carries no room_id, it is the room ID derived from the event ID.
func (e *Event) RoomID() string {
	if e.f.RoomID == "" && e.version.RoomIDFromCreateEvent && e.f.Type == "m.room.create" && e.eventID != "" {
		return "!" + e.eventID[1:]
	}
	return e.f.RoomID
}

// Sender is the user ID of the event's sender.
func (e *Event) Sender() string { return e.f.Sender }

// Type is the event type.
func (e *Event) Type() string { return e.f.Type }

// StateKey is the state key, or nil for a non-state event.
func (e *Event) StateKey() *string { return e.f.StateKey }

// IsState reports whether the event is a state event.
func (e *Event) IsState() bool { return e.f.StateKey != nil }

// StateKeyEquals reports whether the event is a state event with state key s.
func (e *Event) StateKeyEquals(s string) bool { return e.f.StateKey != nil && *e.f.StateKey == s }

// StateTuple is the (type, state_key) the event sets; only meaningful for state events.
func (e *Event) StateTuple() StateKey {
	if e.f.StateKey == nil {
		return StateKey{Type: e.f.Type}
	}
	return StateKey{Type: e.f.Type, StateKey: *e.f.StateKey}
}

// Content is the raw JSON of the content object (canonical).
func (e *Event) Content() json.RawMessage { return e.f.Content }

// Redacts is the ID of the event a redaction redacts: the top-level key
// before v11, content.redacts from v11 (falling back to the other place).
func (e *Event) Redacts() string {
	if e.f.Type != "m.room.redaction" {
		return ""
	}
	if e.version.RedactsInContent && e.f.contentRedacts != "" {
		return e.f.contentRedacts
	}
	return e.f.Redacts
}

// Depth is the event's depth.
func (e *Event) Depth() int64 { return e.f.Depth }

// OriginServerTS is the sender server's timestamp in milliseconds.
func (e *Event) OriginServerTS() int64 { return e.f.OriginServerTS }

// PrevEventIDs are the IDs of the event's prev_events.
func (e *Event) PrevEventIDs() []string { return e.f.prevIDs }

// AuthEventIDs are the IDs of the event's auth_events.
func (e *Event) AuthEventIDs() []string { return e.f.authIDs }

// JSON is the PDU: as given to NewEventFromTrustedJSON, and in canonical
// form for events from ParseEvent, BuildEvent, WithUnsigned and Redact.
func (e *Event) JSON() []byte { return e.raw }

// Membership is content.membership of an m.room.member event.
func (e *Event) Membership() (string, error) {
	if e.f.Type != "m.room.member" {
		return "", fmt.Errorf("eventgraph: %s is not a member event", e.eventID)
	}
	var buf [8]jmember
	ms, ok := splitObject(e.f.Content, buf[:0])
	if !ok {
		return "", fmt.Errorf("eventgraph: member event %s content: %w", e.eventID, badJSON("content", "not an object"))
	}
	v, ok := jget(ms, "membership")
	if !ok || string(v) == "null" {
		return "", nil
	}
	s, ok := decodeString(v)
	if !ok {
		return "", fmt.Errorf("eventgraph: member event %s content: %w", e.eventID, badJSON("content.membership", "not a string"))
	}
	return s, nil
}

// Origin is the deprecated top-level origin (the sending server in room
// versions before 11), or "".
func (e *Event) Origin() string { return e.f.Origin }

// Hashes is the raw `hashes` object, or nil.
func (e *Event) Hashes() json.RawMessage { return e.f.Hashes }

// Unsigned is the raw `unsigned` object, or nil.
func (e *Event) Unsigned() json.RawMessage { return e.f.Unsigned }

// Signatures decodes the `signatures` object: server name → key ID →
// unpadded base64 signature. The map is the caller's to keep.
func (e *Event) Signatures() (map[string]map[string]string, error) {
	var buf [24]jmember
	ms, _ := splitObject(e.canon, buf[:0])
	sigs, err := signaturesOf(ms)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: event %s: %w", e.eventID, err)
	}
	return sigs, nil
}

// Redacted reports whether the event is marked as redacted, i.e. carries
// unsigned.redacted_because.
func (e *Event) Redacted() bool {
	var buf [8]jmember
	ms, ok := splitObject(e.f.Unsigned, buf[:0])
	if !ok {
		return false
	}
	_, ok = jget(ms, "redacted_because")
	return ok
}

// CanonicalPDU is the canonical JSON of the PDU, the form to store and to
// send over federation.
func (e *Event) CanonicalPDU() []byte { return e.canon }

// ReferenceHash is the event's reference hash (for v3+ the event ID is its
// base64); v1–v2 events list it next to the IDs in prev_events and
// auth_events.
func (e *Event) ReferenceHash() ([32]byte, error) {
	h, err := referenceHashOfCanonical(e.canon, e.version)
	if err != nil {
		return h, fmt.Errorf("eventgraph: event %s reference hash: %w", e.eventID, err)
	}
	return h, nil
}

// CheckContentHash verifies the event's hashes.sha256. On
// ErrContentHashMismatch the spec says to go on with the redacted event
// (Redact) instead of dropping it.
func (e *Event) CheckContentHash() error {
	if err := checkContentHashCanonical(e.canon); err != nil {
		return fmt.Errorf("eventgraph: event %s: %w", e.eventID, err)
	}
	return nil
}

// Redact returns the event redacted by its version's algorithm. If
// redactedBecause is not nil it is set as unsigned.redacted_because (the
// redaction event, as the client-server API serves it).
func (e *Event) Redact(redactedBecause json.RawMessage) (*Event, error) {
	red, err := appendRedacted(make([]byte, 0, len(e.canon)), e.canon, e.version, false)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: redact %s: %w", e.eventID, err)
	}
	if redactedBecause != nil {
		because, err := CanonicalJSONLenient(redactedBecause)
		if err != nil {
			return nil, fmt.Errorf("eventgraph: redact %s: redacted_because: %w", e.eventID, err)
		}
		unsigned := appendObject(nil, []jmember{{key: []byte("redacted_because"), val: because}})
		var buf [24]jmember
		ms, _ := splitObject(red, buf[:0])
		red = appendObject(make([]byte, 0, len(red)+len(unsigned)+12), setMember(ms, "unsigned", unsigned))
	}
	out, err := newEventFromCanonical(red, red, e.version, e.eventID, false)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: redact %s: %w", e.eventID, err)
	}
	return out, nil
}

// WithUnsigned returns a copy of the event whose `unsigned` is the given
// JSON object (nil removes it). Hashes and signatures stay valid, since
// they do not cover `unsigned`.
func (e *Event) WithUnsigned(unsigned json.RawMessage) (*Event, error) {
	var buf [24]jmember
	ms, ok := splitObject(e.canon, buf[:0])
	if !ok {
		return nil, fmt.Errorf("eventgraph: event %s: %w", e.eventID, badJSON("", "not a JSON object"))
	}
	if unsigned == nil {
		ms = removeMembers(ms, "unsigned")
	} else {
		u, err := CanonicalJSONLenient(unsigned)
		if err != nil {
			return nil, fmt.Errorf("eventgraph: event %s unsigned: %w", e.eventID, err)
		}
		if jsonKind(u) != '{' {
			return nil, fmt.Errorf("eventgraph: event %s: %w", e.eventID, badJSON("unsigned", "not an object"))
		}
		ms = setMember(ms, "unsigned", u)
	}
	canon := appendObject(make([]byte, 0, len(e.canon)+len(unsigned)), ms)
	out, err := newEventFromCanonical(canon, canon, e.version, e.eventID, false)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: event %s: %w", e.eventID, err)
	}
	return out, nil
}

// ToClientEvent serialises the event in the client-server API's ClientEvent
// format: content, event_id, origin_server_ts, room_id, sender, state_key
// (state events only), type and unsigned (if any; set it with WithUnsigned
// to what the client should see). For m.room.redaction it adds, as room
// version 11 asks of servers, a top-level redacts in v11+ rooms and
// content.redacts in older ones.
func (e *Event) ToClientEvent() ([]byte, error) {
	content := []byte(e.f.Content)
	if len(content) == 0 {
		content = jsonEmptyObject
	}
	var redacts []byte
	if e.f.Type == "m.room.redaction" {
		if id := e.Redacts(); id != "" {
			redacts = appendCanonicalString(nil, id)
			if !e.version.RedactsInContent && e.f.contentRedacts == "" {
				var cbuf [16]jmember
				cms, ok := splitObject(content, cbuf[:0])
				if !ok {
					return nil, fmt.Errorf("eventgraph: event %s: %w", e.eventID, badJSON("content", "not an object"))
				}
				content = appendObject(make([]byte, 0, len(content)+len(redacts)+12), setMember(cms, "redacts", redacts))
			}
		}
	}
	out := make([]byte, 0, len(content)+len(e.f.Unsigned)+256)
	ms := make([]jmember, 0, 9)
	ms = append(ms, jmember{key: []byte("content"), val: content})
	ms = append(ms, jmember{key: []byte("event_id"), val: appendCanonicalString(nil, e.eventID)})
	ms = append(ms, jmember{key: []byte("origin_server_ts"), val: strconv.AppendInt(nil, e.f.OriginServerTS, 10)})
	if redacts != nil {
		ms = append(ms, jmember{key: []byte("redacts"), val: redacts})
	}
	ms = append(ms, jmember{key: []byte("room_id"), val: appendCanonicalString(nil, e.RoomID())})
	ms = append(ms, jmember{key: []byte("sender"), val: appendCanonicalString(nil, e.f.Sender)})
	if e.f.StateKey != nil {
		ms = append(ms, jmember{key: []byte("state_key"), val: appendCanonicalString(nil, *e.f.StateKey)})
	}
	ms = append(ms, jmember{key: []byte("type"), val: appendCanonicalString(nil, e.f.Type)})
	if len(e.f.Unsigned) > 0 {
		ms = append(ms, jmember{key: []byte("unsigned"), val: e.f.Unsigned})
	}
	return appendObject(out, ms), nil
}
