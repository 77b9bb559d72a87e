package storage

import (
	"fmt"

	"go.etcd.io/bbolt"
)

// The event index store: which room holds an event. Each shard actor
// ("eventidx/<n>") keeps, in its sub-bucket "events", event ID → room ID
// for the event IDs that hash to its shard. GET /_matrix/federation/v1/
// event/{eventId} names no room, so the gateway asks the index first.
const eventIndexStore = "events"

// MaxIndexedIDBytes bounds the event and room IDs the index keeps: the
// grammar's 255 bytes (longer IDs are invalid and never indexed).
const MaxIndexedIDBytes = 255

// PutEventIndex records that roomID holds every event of eventIDs. An event
// already indexed keeps its first room: an event ID names one event, and a
// later claim by another room cannot be the same event (its ID would differ),
// so it is a forgery that must not hide the real one.
func PutEventIndex(tx *bbolt.Tx, identity, roomID string, eventIDs []string) error {
	if roomID == "" || len(roomID) > MaxIndexedIDBytes {
		return fmt.Errorf("storage: event index %s: room ID of %d bytes: %w", identity, len(roomID), ErrBadKey)
	}
	b, err := Namespace(tx, true, identity, eventIndexStore)
	if err != nil {
		return fmt.Errorf("storage: event index %s: %w", identity, err)
	}
	for _, id := range eventIDs {
		if id == "" || len(id) > MaxIndexedIDBytes {
			return fmt.Errorf("storage: event index %s: event ID of %d bytes: %w", identity, len(id), ErrBadKey)
		}
		if b.Get([]byte(id)) != nil {
			continue
		}
		if err := b.Put([]byte(id), []byte(roomID)); err != nil {
			return fmt.Errorf("storage: event index %s: put %s: %w", identity, id, err)
		}
	}
	return nil
}

// EventIndexRoom returns the room holding eventID, or ok=false if the
// index does not know the event.
func EventIndexRoom(tx *bbolt.Tx, identity, eventID string) (roomID string, ok bool, err error) {
	if eventID == "" || len(eventID) > MaxIndexedIDBytes {
		return "", false, nil
	}
	b, err := Namespace(tx, false, identity, eventIndexStore)
	if err != nil || b == nil {
		return "", false, err
	}
	v := b.Get([]byte(eventID))
	if v == nil {
		return "", false, nil
	}
	return string(v), true, nil
}
