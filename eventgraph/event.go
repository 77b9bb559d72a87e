package eventgraph

import (
	"encoding/json"
	"fmt"
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
type Event struct {
	version *RoomVersion
	eventID string
	raw     []byte // the PDU JSON as given (for v3+ without event_id)
	f       eventFields
}

// eventFields are the top-level PDU keys shoal reads. prev_events and
// auth_events have two shapes (v1–v2: [id, hashes] pairs; v3+: IDs).
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
}

// NewEventFromTrustedJSON wraps a PDU that shoal itself stored or built
// earlier, with its known event ID. It decodes the fields but does not
// re-check hashes, signatures or format limits: never give it peer or
// client input.
func NewEventFromTrustedJSON(raw []byte, rv *RoomVersion, eventID string) (*Event, error) {
	e := &Event{version: rv, eventID: eventID, raw: raw}
	if err := json.Unmarshal(raw, &e.f); err != nil {
		return nil, fmt.Errorf("eventgraph: decode event %s: %w", eventID, err)
	}
	var err error
	if e.f.prevIDs, err = decodeEventRefs(e.f.PrevEvents, rv); err != nil {
		return nil, fmt.Errorf("eventgraph: event %s prev_events: %w", eventID, err)
	}
	if e.f.authIDs, err = decodeEventRefs(e.f.AuthEvents, rv); err != nil {
		return nil, fmt.Errorf("eventgraph: event %s auth_events: %w", eventID, err)
	}
	if e.eventID == "" {
		e.eventID = e.f.EventID
	}
	return e, nil
}

// decodeEventRefs reads prev_events/auth_events: a list of IDs (v3+) or of
// [id, {hashes}] pairs (v1–v2).
func decodeEventRefs(raw json.RawMessage, rv *RoomVersion) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if rv.EventIDs != EventIDFormatV1 {
		var ids []string
		if err := json.Unmarshal(raw, &ids); err != nil {
			return nil, err
		}
		return ids, nil
	}
	var pairs []json.RawMessage
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(pairs))
	for _, p := range pairs {
		var pair []json.RawMessage
		if err := json.Unmarshal(p, &pair); err != nil || len(pair) == 0 {
			return nil, fmt.Errorf("event reference is not an [id, hashes] pair")
		}
		var id string
		if err := json.Unmarshal(pair[0], &id); err != nil {
			return nil, fmt.Errorf("event reference id: %w", err)
		}
		ids = append(ids, id)
	}
	return ids, nil
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

// Content is the raw JSON of the content object.
func (e *Event) Content() json.RawMessage { return e.f.Content }

// Redacts is the ID of the event a redaction redacts: the top-level key
// before v11, content.redacts from v11 (falling back to the other place).
func (e *Event) Redacts() string {
	if e.f.Type != "m.room.redaction" {
		return ""
	}
	if e.version.RedactsInContent {
		var c struct {
			Redacts string `json:"redacts"`
		}
		if json.Unmarshal(e.f.Content, &c) == nil && c.Redacts != "" {
			return c.Redacts
		}
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

// JSON is the PDU as given to the constructor.
func (e *Event) JSON() []byte { return e.raw }

// Membership is content.membership of an m.room.member event.
func (e *Event) Membership() (string, error) {
	if e.f.Type != "m.room.member" {
		return "", fmt.Errorf("eventgraph: %s is not a member event", e.eventID)
	}
	var c struct {
		Membership string `json:"membership"`
	}
	if err := json.Unmarshal(e.f.Content, &c); err != nil {
		return "", fmt.Errorf("eventgraph: member event %s content: %w", e.eventID, err)
	}
	return c.Membership, nil
}
