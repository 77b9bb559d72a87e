package storage

import (
	"encoding/json"
	"fmt"

	"go.etcd.io/bbolt"
)

// The directory and alias stores.
//
// The public room directory actor ("directory/public") keeps one entry per
// published room in the sub-bucket "published": room ID → DirectoryEntry.
//
// An alias actor ("alias/#name:server") keeps its one mapping in the
// sub-bucket "alias" under the key "mapping".
const (
	directoryStore = "published"
	aliasStore     = "alias"
)

var aliasKey = []byte("mapping")

// DirectoryEntry is a published room: its PublicRoomsChunk as last reported
// by the room, and the room position that summary was taken at.
type DirectoryEntry struct {
	Summary json.RawMessage `json:"summary"`
	Pos     uint64          `json:"pos"`
}

// DirectoryEntries returns every published room of the directory identity.
func DirectoryEntries(tx *bbolt.Tx, identity string) (map[string]DirectoryEntry, error) {
	b, err := Namespace(tx, false, identity, directoryStore)
	if err != nil {
		return nil, fmt.Errorf("storage: directory %s: %w", identity, err)
	}
	out := map[string]DirectoryEntry{}
	if b == nil {
		return out, nil
	}
	err = b.ForEach(func(k, v []byte) error {
		var e DirectoryEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("storage: directory %s: decode %s: %w", identity, k, err)
		}
		out[string(k)] = e
		return nil
	})
	return out, err
}

// PutDirectoryEntry publishes (or updates) a room in the directory.
func PutDirectoryEntry(tx *bbolt.Tx, identity, roomID string, e DirectoryEntry) error {
	b, err := Namespace(tx, true, identity, directoryStore)
	if err != nil {
		return fmt.Errorf("storage: directory %s: %w", identity, err)
	}
	if roomID == "" || len(roomID) > bbolt.MaxKeySize {
		return fmt.Errorf("storage: directory %s: room ID of %d bytes: %w", identity, len(roomID), ErrBadKey)
	}
	v, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("storage: directory %s: encode %s: %w", identity, roomID, err)
	}
	return b.Put([]byte(roomID), v)
}

// DeleteDirectoryEntry unpublishes a room.
func DeleteDirectoryEntry(tx *bbolt.Tx, identity, roomID string) error {
	b, err := Namespace(tx, false, identity, directoryStore)
	if err != nil {
		return fmt.Errorf("storage: directory %s: %w", identity, err)
	}
	if b == nil || roomID == "" || len(roomID) > bbolt.MaxKeySize {
		return nil
	}
	return b.Delete([]byte(roomID))
}

// AliasMapping is what an alias points to.
type AliasMapping struct {
	RoomID  string   `json:"room_id"`
	Creator string   `json:"creator"`
	Servers []string `json:"servers,omitempty"`
}

// AliasMappingOf returns the mapping of the alias identity, or ok=false if none.
func AliasMappingOf(tx *bbolt.Tx, identity string) (m AliasMapping, ok bool, err error) {
	b, err := Namespace(tx, false, identity, aliasStore)
	if err != nil || b == nil {
		return m, false, err
	}
	v := b.Get(aliasKey)
	if v == nil {
		return m, false, nil
	}
	if err := json.Unmarshal(v, &m); err != nil {
		return m, false, fmt.Errorf("storage: alias %s: decode: %w", identity, err)
	}
	return m, true, nil
}

// PutAliasMapping stores the mapping of the alias identity.
func PutAliasMapping(tx *bbolt.Tx, identity string, m AliasMapping) error {
	b, err := Namespace(tx, true, identity, aliasStore)
	if err != nil {
		return fmt.Errorf("storage: alias %s: %w", identity, err)
	}
	v, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("storage: alias %s: encode: %w", identity, err)
	}
	return b.Put(aliasKey, v)
}

// DeleteAliasMapping removes everything the alias identity stored.
func DeleteAliasMapping(tx *bbolt.Tx, identity string) error {
	return DeleteIdentity(tx, identity)
}
