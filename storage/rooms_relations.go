package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"

	"go.etcd.io/bbolt"
)

// The relations index of a room, beside its other stores (see rooms.go):
//
//	relations     parent event ID 0x00 u64(child pos) → RoomRelation
//	threads       thread root event ID → RoomThread
//	threadorder   u64(latest pos) root event ID → nothing (threads by activity)
//	threadusers   root event ID 0x00 user → nothing (who took part)
//
// A relation is indexed when its event is committed and removed when the
// event is redacted (a redacted event relates to nothing).
const (
	roomRelationsStore   = "relations"
	roomThreadsStore     = "threads"
	roomThreadOrderStore = "threadorder"
	roomThreadUsersStore = "threadusers"
)

// RoomRelation is one event relating to a parent event.
type RoomRelation struct {
	Pos     uint64 `json:"-"`
	EventID string `json:"id"`
	RelType string `json:"rel"`
	Type    string `json:"type"`
	Sender  string `json:"sender"`
	TS      int64  `json:"ts"`
}

// RoomThread is the summary of one thread.
type RoomThread struct {
	LatestPos uint64 `json:"latest_pos"`
	LatestID  string `json:"latest_id"`
	Count     int64  `json:"count"`
}

func relationKey(parent string, pos uint64) []byte {
	k := make([]byte, 0, len(parent)+9)
	k = append(k, parent...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, pos)
}

func validRelationID(id string) bool {
	return id != "" && len(id)+9 <= bbolt.MaxKeySize && !bytes.Contains([]byte(id), []byte{0})
}

// PutRelation indexes child (at position child.Pos) as relating to parent.
func (r RoomTx) PutRelation(parent string, child RoomRelation) error {
	if !validRelationID(parent) {
		return fmt.Errorf("storage: room %s: relation parent of %d bytes: %w", r.identity, len(parent), ErrBadKey)
	}
	b, err := r.bucket(roomRelationsStore, true)
	if err != nil {
		return err
	}
	v, err := json.Marshal(child)
	if err != nil {
		return fmt.Errorf("storage: room %s: encode relation: %w", r.identity, err)
	}
	return b.Put(relationKey(parent, child.Pos), v)
}

// DeleteRelation removes the relation of the child at pos to parent.
func (r RoomTx) DeleteRelation(parent string, pos uint64) error {
	b, err := r.bucket(roomRelationsStore, false)
	if err != nil || b == nil || !validRelationID(parent) {
		return err
	}
	return b.Delete(relationKey(parent, pos))
}

// ScanRelations calls fn for the events relating to parent whose positions
// lie in [lo, hi], ascending or (desc) descending, until fn returns false.
func (r RoomTx) ScanRelations(parent string, lo, hi uint64, desc bool, fn func(rel RoomRelation) (bool, error)) error {
	if lo > hi || !validRelationID(parent) {
		return nil
	}
	b, err := r.bucket(roomRelationsStore, false)
	if err != nil || b == nil {
		return err
	}
	prefix := append([]byte(parent), 0)
	c := b.Cursor()
	var k, v []byte
	if desc {
		k, v = c.Seek(relationKey(parent, hi))
		if k == nil {
			k, v = c.Last()
		}
		for k != nil && bytes.Compare(k, relationKey(parent, hi)) > 0 {
			k, v = c.Prev()
		}
	} else {
		k, v = c.Seek(relationKey(parent, lo))
	}
	for ; k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; func() {
		if desc {
			k, v = c.Prev()
		} else {
			k, v = c.Next()
		}
	}() {
		pos := binary.BigEndian.Uint64(k[len(prefix):])
		if pos < lo || pos > hi {
			return nil
		}
		var rel RoomRelation
		if err := json.Unmarshal(v, &rel); err != nil {
			return fmt.Errorf("storage: room %s: decode relation: %w", r.identity, err)
		}
		rel.Pos = pos
		more, err := fn(rel)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// HasRelations reports whether any event relates to parent.
func (r RoomTx) HasRelations(parent string) (bool, error) {
	b, err := r.bucket(roomRelationsStore, false)
	if err != nil || b == nil || !validRelationID(parent) {
		return false, err
	}
	prefix := append([]byte(parent), 0)
	k, _ := b.Cursor().Seek(prefix)
	return k != nil && bytes.HasPrefix(k, prefix), nil
}

// Thread returns the summary of the thread rooted at root, or nil.
func (r RoomTx) Thread(root string) (*RoomThread, error) {
	b, err := r.bucket(roomThreadsStore, false)
	if err != nil || b == nil || !validRelationID(root) {
		return nil, err
	}
	v := b.Get([]byte(root))
	if v == nil {
		return nil, nil
	}
	var t RoomThread
	if err := json.Unmarshal(v, &t); err != nil {
		return nil, fmt.Errorf("storage: room %s: decode thread: %w", r.identity, err)
	}
	return &t, nil
}

func threadOrderKey(pos uint64, root string) []byte {
	return append(U64Key(pos), root...)
}

// PutThread writes a thread's summary (nil removes the thread) and keeps
// the activity order in step.
func (r RoomTx) PutThread(root string, t *RoomThread) error {
	if !validRelationID(root) {
		return fmt.Errorf("storage: room %s: thread root of %d bytes: %w", r.identity, len(root), ErrBadKey)
	}
	old, err := r.Thread(root)
	if err != nil {
		return err
	}
	tb, err := r.bucket(roomThreadsStore, true)
	if err != nil {
		return err
	}
	ob, err := r.bucket(roomThreadOrderStore, true)
	if err != nil {
		return err
	}
	if old != nil {
		if err := ob.Delete(threadOrderKey(old.LatestPos, root)); err != nil {
			return err
		}
	}
	if t == nil {
		return tb.Delete([]byte(root))
	}
	v, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("storage: room %s: encode thread: %w", r.identity, err)
	}
	if err := tb.Put([]byte(root), v); err != nil {
		return err
	}
	return ob.Put(threadOrderKey(t.LatestPos, root), []byte{1})
}

// ScanThreads calls fn for the thread roots whose latest event lies at or
// before position hi, most recently active first, until fn returns false.
func (r RoomTx) ScanThreads(hi uint64, fn func(latestPos uint64, root string) (bool, error)) error {
	b, err := r.bucket(roomThreadOrderStore, false)
	if err != nil || b == nil {
		return err
	}
	c := b.Cursor()
	k, _ := c.Seek(U64Key(hi + 1))
	if k == nil || hi == ^uint64(0) {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	for ; k != nil; k, _ = c.Prev() {
		if len(k) < 8 {
			return fmt.Errorf("storage: room %s: malformed thread order key: %w", r.identity, ErrBadKey)
		}
		pos := binary.BigEndian.Uint64(k[:8])
		if pos > hi {
			continue
		}
		more, err := fn(pos, string(k[8:]))
		if err != nil || !more {
			return err
		}
	}
	return nil
}

func threadUserKey(root, user string) []byte {
	k := make([]byte, 0, len(root)+1+len(user))
	k = append(k, root...)
	k = append(k, 0)
	return append(k, user...)
}

// PutThreadUser records that user took part in the thread rooted at root.
func (r RoomTx) PutThreadUser(root, user string) error {
	k := threadUserKey(root, user)
	if !validRelationID(root) || len(k) > bbolt.MaxKeySize {
		return fmt.Errorf("storage: room %s: thread user key of %d bytes: %w", r.identity, len(k), ErrBadKey)
	}
	b, err := r.bucket(roomThreadUsersStore, true)
	if err != nil {
		return err
	}
	return b.Put(k, []byte{1})
}

// ThreadUser reports whether user took part in the thread rooted at root.
func (r RoomTx) ThreadUser(root, user string) (bool, error) {
	b, err := r.bucket(roomThreadUsersStore, false)
	if err != nil || b == nil {
		return false, err
	}
	k := threadUserKey(root, user)
	if len(k) > bbolt.MaxKeySize {
		return false, nil
	}
	v := b.Get(k)
	return v != nil, nil
}
