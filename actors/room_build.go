package actors

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/shoal-chat/shoal/eventgraph"
)

// Limits of the event format (server-server API, "Size limits").
const (
	maxIDBytes     = eventgraph.MaxEventTypeBytes
	maxPrevEvents  = eventgraph.MaxPrevEvents
	eventIDRandLen = 18
)

// eventDraft is an event before it is placed in the room's graph.
type eventDraft struct {
	Type     string
	StateKey *string
	Sender   string
	Content  json.RawMessage
	// Redacts is the event an m.room.redaction redacts.
	Redacts string
}

func (d eventDraft) isState() bool { return d.StateKey != nil }

func strPtr(s string) *string { return &s }

// checkDraft applies the size limits that do not need the built event.
func checkDraft(d eventDraft) error {
	switch {
	case d.Type == "":
		return ErrBadJSON("event type is empty")
	case len(d.Type) > maxIDBytes:
		return errTooLarge("event type exceeds %d bytes", maxIDBytes)
	case d.StateKey != nil && len(*d.StateKey) > maxIDBytes:
		return errTooLarge("state key exceeds %d bytes", maxIDBytes)
	case len(d.Sender) > maxIDBytes:
		return errTooLarge("sender exceeds %d bytes", maxIDBytes)
	}
	if len(d.Content) == 0 || d.Content[0] != '{' {
		return ErrBadJSON("event content must be a JSON object")
	}
	return nil
}

func errTooLarge(format string, args ...any) *MatrixError {
	return Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", format, args...)
}

// buildEvent builds, hashes and signs a new event with eventgraph. Format
// errors become the client-server API's: M_TOO_LARGE (413), M_BAD_JSON or
// M_INVALID_PARAM (400).
func buildEvent(server *ServerIdentity, rv *eventgraph.RoomVersion, p eventgraph.ProtoEvent,
	lookup func(string) (*eventgraph.Event, error)) (*eventgraph.Event, error) {
	if rv.EventIDs == eventgraph.EventIDFormatV1 {
		// v1–v2 list each referenced event's reference hash beside its ID.
		p.ReferenceHashes = map[string][32]byte{}
		for _, id := range append(append([]string{}, p.PrevEvents...), p.AuthEvents...) {
			ev, err := lookup(id)
			if err != nil {
				return nil, err
			}
			if ev == nil {
				return nil, fmt.Errorf("actors: referenced event %s is not loaded", id)
			}
			h, err := ev.ReferenceHash()
			if err != nil {
				return nil, fmt.Errorf("actors: %w", err)
			}
			p.ReferenceHashes[id] = h
		}
	}
	ev, err := eventgraph.BuildEvent(p, rv, server.ServerName, server.KeyID, server.PrivateKey, eventgraph.WithRandom(rand.Reader))
	if err != nil {
		switch eventgraph.Errcode(err) {
		case "M_TOO_LARGE":
			return nil, errTooLarge("event too large: %v", err)
		case "M_BAD_JSON":
			return nil, ErrBadJSON("event is not valid: %v", err)
		case "M_INVALID_PARAM":
			return nil, ErrInvalidParam("event is not valid: %v", err)
		}
		return nil, fmt.Errorf("actors: %w", err)
	}
	return ev, nil
}

// BuildCreateEvent builds and signs the m.room.create event of a new room
// created by creator with the given content (room_version, and creator
// before v11, must already be in it). For room version 12 roomID is empty:
// the room ID is derived from the returned event ID, which is why the
// gateway builds this event before it can route CreateRoom to the room's
// actor. For earlier versions roomID names the room.
func BuildCreateEvent(server *ServerIdentity, rv *eventgraph.RoomVersion, roomID, creator string, content json.RawMessage, ts int64) (pdu []byte, eventID string, err error) {
	if rv.RoomIDFromCreateEvent != (roomID == "") {
		return nil, "", errors.New("actors: build create event: room ID must be empty exactly for versions that derive it")
	}
	d := eventDraft{Type: eventgraph.TypeCreate, StateKey: strPtr(""), Sender: creator, Content: content}
	if err := checkDraft(d); err != nil {
		return nil, "", err
	}
	ev, err := buildEvent(server, rv, eventgraph.ProtoEvent{RoomID: roomID, Sender: creator, Type: d.Type,
		StateKey: d.StateKey, Content: content, PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1,
		OriginServerTS: ts}, nil)
	if err != nil {
		return nil, "", err
	}
	return ev.CanonicalPDU(), ev.EventID(), nil
}

// RoomIDForCreateEvent is the room ID of a v12+ room whose create event has
// eventID.
func RoomIDForCreateEvent(eventID string) (string, error) {
	return eventgraph.RoomIDFromCreateEventID(eventID)
}

// randomString is n URL-safe random characters.
func randomString(n int) string {
	b := make([]byte, (n*6+7)/8)
	if _, err := rand.Read(b); err != nil {
		panic("actors: no randomness: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)[:n]
}

// NewRoomID makes a room ID for room versions 1–11: "!" + random + ":" + server.
func NewRoomID(serverName string) string {
	return "!" + randomString(18) + ":" + serverName
}

// serverOf is the server name of a user, room or event ID ("" if none).
func serverOf(id string) string {
	_, s, ok := strings.Cut(id, ":")
	if !ok {
		return ""
	}
	return s
}
