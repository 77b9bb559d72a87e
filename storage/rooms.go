package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"
)

// The room store: everything a room actor persists, under the top-level
// bucket of its identity ("room/<room_id>"), one sub-bucket per kind:
//
//	roommeta   the room's header: version, create event, stream position, …
//	events     event ID → RoomEvent (PDU plus shoal's bookkeeping)
//	timeline   stream position (u64) → event ID
//	state      type 0x00 state_key → event ID (the current state)
//	deltas     stream position (u64) → RoomStateDelta, one per state event
//	txns       user 0x00 device 0x00 txn ID → event ID
//	receipts   receipt type 0x00 thread 0x00 user → RoomReceipt
//	aliases    local alias → nothing
//
// Stream positions count the events appended to the room's timeline from 1.
// The state deltas make the state after any position computable from the
// current state by undoing the deltas above it, so no full state is copied
// per event.
const (
	roomMetaStore     = "roommeta"
	roomEventsStore   = "events"
	roomTimelineStore = "timeline"
	roomStateStore    = "state"
	roomDeltasStore   = "deltas"
	roomTxnsStore     = "txns"
	roomReceiptsStore = "receipts"
	roomAliasesStore  = "aliases"
)

var roomMetaKey = []byte("meta")

// RoomMeta is the header of a room: written with its first event and
// rewritten with every event appended.
type RoomMeta struct {
	Version     string   `json:"version"`
	CreateID    string   `json:"create_id"`
	Pos         uint64   `json:"pos"`
	Depth       int64    `json:"depth"`
	Extremities []string `json:"extremities"`
	// Published is whether the room is listed in the public room directory.
	Published bool `json:"published,omitempty"`
	// StateGroup is the state group of the current state, NextGroup the
	// next free group ID (see roomstate.go).
	StateGroup uint64 `json:"state_group,omitempty"`
	NextGroup  uint64 `json:"next_group,omitempty"`
	// GroupChain is the current state group's chain length.
	GroupChain int `json:"group_chain,omitempty"`
	// TimelineBase is, for a room joined over federation, the position
	// before its first event: positions up to it hold history fetched with
	// /backfill, placed downwards from BackfillNext (0: no room left).
	TimelineBase uint64 `json:"timeline_base,omitempty"`
	BackfillNext uint64 `json:"backfill_next,omitempty"`
	// Outsider marks a room known only from a local user's invite or knock
	// received over federation: no state, only that membership.
	Outsider bool `json:"outsider,omitempty"`
}

// RoomEvent is one event of a room as the room keeps it.
type RoomEvent struct {
	// PDU is the event as built or received; after a redaction it is the
	// redacted PDU, whose hashes and signatures still verify.
	PDU []byte `json:"-"`
	// Pos is the event's stream position (0 for an event not in the timeline).
	Pos uint64 `json:"pos"`
	// Device and TxnID are the sending device and its transaction ID, for
	// unsigned.transaction_id.
	Device string `json:"device,omitempty"`
	TxnID  string `json:"txn_id,omitempty"`
	// RedactedBy is the ID of the redaction applied to the event.
	RedactedBy string `json:"redacted_by,omitempty"`
	// ReplacesState is the state event this one replaced, for prev_content.
	ReplacesState string `json:"replaces_state,omitempty"`
	// StateGroup is the state after the event (0: not in the graph, or
	// stored before state groups existed — see the room actor).
	StateGroup uint64 `json:"sg,omitempty"`
	// Outlier events were fetched as auth or state of others: stored,
	// without a place in the timeline or known state.
	Outlier bool `json:"outlier,omitempty"`
	// Rejected is why the auth rules rejected the event ("" if they did not).
	Rejected string `json:"rejected,omitempty"`
	// SoftFailed events passed auth at their place in the graph but not
	// against the current state: kept, never shown or built upon.
	SoftFailed bool `json:"soft_failed,omitempty"`
}

// RoomStateDelta records how one state event changed the state.
type RoomStateDelta struct {
	Type     string `json:"type"`
	StateKey string `json:"state_key"`
	Prev     string `json:"prev,omitempty"` // "" when the key was unset
	New      string `json:"new"`
}

// RoomReceipt is one user's receipt of one type in one thread.
type RoomReceipt struct {
	EventID string `json:"event_id"`
	TS      int64  `json:"ts"`
	// EphemeralPos is the room's ephemeral position when the receipt was set.
	EphemeralPos uint64 `json:"eph"`
}

// RoomReceiptKey names a receipt slot.
type RoomReceiptKey struct {
	Type, Thread, User string
}

// RoomStateEntry is one (type, state_key) → event ID of a room's state.
type RoomStateEntry struct {
	Type, StateKey, EventID string
}

// RoomTx reads and writes one room's data inside a bbolt transaction. Its
// readers treat missing buckets as empty, so reading a room that was never
// written creates nothing.
type RoomTx struct {
	tx       *bbolt.Tx
	identity string
}

// Room returns the room store of identity inside tx.
func Room(tx *bbolt.Tx, identity string) RoomTx { return RoomTx{tx: tx, identity: identity} }

func (r RoomTx) bucket(store string, create bool) (*bbolt.Bucket, error) {
	b, err := Namespace(r.tx, create, r.identity, store)
	if err != nil {
		return nil, fmt.Errorf("storage: room %s: %w", r.identity, err)
	}
	return b, nil
}

// Meta returns the room header, or ok=false when the room has none.
func (r RoomTx) Meta() (m RoomMeta, ok bool, err error) {
	b, err := r.bucket(roomMetaStore, false)
	if err != nil || b == nil {
		return m, false, err
	}
	v := b.Get(roomMetaKey)
	if v == nil {
		return m, false, nil
	}
	if err := json.Unmarshal(v, &m); err != nil {
		return m, false, fmt.Errorf("storage: room %s: decode meta: %w", r.identity, err)
	}
	return m, true, nil
}

// PutMeta writes the room header.
func (r RoomTx) PutMeta(m RoomMeta) error {
	b, err := r.bucket(roomMetaStore, true)
	if err != nil {
		return err
	}
	v, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("storage: room %s: encode meta: %w", r.identity, err)
	}
	return b.Put(roomMetaKey, v)
}

// encodeStoredEvent lays a RoomEvent out as uvarint(len(header)) header pdu:
// the PDU bytes are kept exactly as given.
func encodeStoredEvent(e *RoomEvent) ([]byte, error) {
	hdr, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	out := binary.AppendUvarint(make([]byte, 0, len(hdr)+len(e.PDU)+4), uint64(len(hdr)))
	out = append(out, hdr...)
	return append(out, e.PDU...), nil
}

func decodeStoredEvent(v []byte) (*RoomEvent, error) {
	n, w := binary.Uvarint(v)
	if w <= 0 || uint64(len(v)-w) < n {
		return nil, errors.New("truncated stored event")
	}
	e := &RoomEvent{}
	if err := json.Unmarshal(v[w:w+int(n)], e); err != nil {
		return nil, err
	}
	e.PDU = bytes.Clone(v[w+int(n):])
	return e, nil
}

// Event returns a stored event, or nil if the room has no such event.
func (r RoomTx) Event(eventID string) (*RoomEvent, error) {
	b, err := r.bucket(roomEventsStore, false)
	if err != nil || b == nil || eventID == "" || len(eventID) > bbolt.MaxKeySize {
		return nil, err
	}
	v := b.Get([]byte(eventID))
	if v == nil {
		return nil, nil
	}
	e, err := decodeStoredEvent(v)
	if err != nil {
		return nil, fmt.Errorf("storage: room %s: decode event %s: %w", r.identity, eventID, err)
	}
	return e, nil
}

// PutEvent stores (or replaces) an event.
func (r RoomTx) PutEvent(eventID string, e *RoomEvent) error {
	b, err := r.bucket(roomEventsStore, true)
	if err != nil {
		return err
	}
	v, err := encodeStoredEvent(e)
	if err != nil {
		return fmt.Errorf("storage: room %s: encode event %s: %w", r.identity, eventID, err)
	}
	if err := b.Put([]byte(eventID), v); err != nil {
		return fmt.Errorf("storage: room %s: put event %s: %w", r.identity, eventID, err)
	}
	return nil
}

// PutTimeline records that the event at stream position pos is eventID.
func (r RoomTx) PutTimeline(pos uint64, eventID string) error {
	b, err := r.bucket(roomTimelineStore, true)
	if err != nil {
		return err
	}
	return b.Put(U64Key(pos), []byte(eventID))
}

// TimelineAt returns the event ID at stream position pos ("" if none).
func (r RoomTx) TimelineAt(pos uint64) (string, error) {
	b, err := r.bucket(roomTimelineStore, false)
	if err != nil || b == nil {
		return "", err
	}
	return string(b.Get(U64Key(pos))), nil
}

// ScanTimeline calls fn for the timeline positions in [lo, hi], ascending or
// (desc) descending, until fn returns false or an error.
func (r RoomTx) ScanTimeline(lo, hi uint64, desc bool, fn func(pos uint64, eventID string) (bool, error)) error {
	if lo > hi {
		return nil
	}
	b, err := r.bucket(roomTimelineStore, false)
	if err != nil || b == nil {
		return err
	}
	return scanU64(b, lo, hi, desc, func(pos uint64, v []byte) (bool, error) {
		return fn(pos, string(v))
	})
}

// scanU64 walks the u64-keyed entries of b in [lo, hi].
func scanU64(b *bbolt.Bucket, lo, hi uint64, desc bool, fn func(k uint64, v []byte) (bool, error)) error {
	c := b.Cursor()
	var k, v []byte
	if desc {
		k, v = c.Seek(U64Key(hi))
		if k == nil {
			k, v = c.Last()
		} else if pos, _ := ParseU64Key(k); pos > hi {
			k, v = c.Prev()
		}
	} else {
		k, v = c.Seek(U64Key(lo))
	}
	for ; k != nil; func() {
		if desc {
			k, v = c.Prev()
		} else {
			k, v = c.Next()
		}
	}() {
		pos, err := ParseU64Key(k)
		if err != nil {
			return err
		}
		if pos < lo || pos > hi {
			return nil
		}
		more, err := fn(pos, v)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

func roomStateKey(typ, stateKey string) []byte {
	k := make([]byte, 0, len(typ)+1+len(stateKey))
	k = append(k, typ...)
	k = append(k, 0)
	return append(k, stateKey...)
}

// State returns the room's current state.
func (r RoomTx) State() ([]RoomStateEntry, error) {
	b, err := r.bucket(roomStateStore, false)
	if err != nil || b == nil {
		return nil, err
	}
	var out []RoomStateEntry
	err = b.ForEach(func(k, v []byte) error {
		typ, sk, ok := bytes.Cut(k, []byte{0})
		if !ok {
			return fmt.Errorf("storage: room %s: malformed state key %q", r.identity, k)
		}
		out = append(out, RoomStateEntry{Type: string(typ), StateKey: string(sk), EventID: string(v)})
		return nil
	})
	return out, err
}

// PutState sets the current state of (typ, stateKey) to eventID.
func (r RoomTx) PutState(typ, stateKey, eventID string) error {
	b, err := r.bucket(roomStateStore, true)
	if err != nil {
		return err
	}
	k := roomStateKey(typ, stateKey)
	if len(k) > bbolt.MaxKeySize {
		return fmt.Errorf("storage: room %s: state key of %d bytes: %w", r.identity, len(k), ErrBadKey)
	}
	return b.Put(k, []byte(eventID))
}

// PutDelta records the state change made by the event at position pos.
func (r RoomTx) PutDelta(pos uint64, d RoomStateDelta) error {
	return r.PutDeltas(pos, []RoomStateDelta{d})
}

// PutDeltas records the changes of the current state at position pos: one
// for a local state event, possibly several when an event from another
// server made state resolution change the state.
func (r RoomTx) PutDeltas(pos uint64, ds []RoomStateDelta) error {
	if len(ds) == 0 {
		return nil
	}
	b, err := r.bucket(roomDeltasStore, true)
	if err != nil {
		return err
	}
	var v []byte
	if len(ds) == 1 {
		v, err = json.Marshal(ds[0])
	} else {
		v, err = json.Marshal(ds)
	}
	if err != nil {
		return fmt.Errorf("storage: room %s: encode delta: %w", r.identity, err)
	}
	return b.Put(U64Key(pos), v)
}

// ScanDeltas calls fn for the state deltas at positions in [lo, hi],
// ascending or (desc) descending, until fn returns false or an error.
func (r RoomTx) ScanDeltas(lo, hi uint64, desc bool, fn func(pos uint64, d RoomStateDelta) (bool, error)) error {
	if lo > hi {
		return nil
	}
	b, err := r.bucket(roomDeltasStore, false)
	if err != nil || b == nil {
		return err
	}
	return scanU64(b, lo, hi, desc, func(pos uint64, v []byte) (bool, error) {
		var ds []RoomStateDelta
		if len(v) > 0 && v[0] == '[' {
			if err := json.Unmarshal(v, &ds); err != nil {
				return false, fmt.Errorf("storage: room %s: decode deltas at %d: %w", r.identity, pos, err)
			}
		} else {
			var d RoomStateDelta
			if err := json.Unmarshal(v, &d); err != nil {
				return false, fmt.Errorf("storage: room %s: decode delta at %d: %w", r.identity, pos, err)
			}
			ds = []RoomStateDelta{d}
		}
		// Undoing (desc) goes through one position's changes backwards.
		for i := range ds {
			d := ds[i]
			if desc {
				d = ds[len(ds)-1-i]
			}
			more, err := fn(pos, d)
			if err != nil || !more {
				return more, err
			}
		}
		return true, nil
	})
}

func roomTxnKey(user, device, txn string) []byte {
	k := make([]byte, 0, len(user)+len(device)+len(txn)+2)
	k = append(k, user...)
	k = append(k, 0)
	k = append(k, device...)
	k = append(k, 0)
	return append(k, txn...)
}

// Txn returns the event a (user, device, transaction ID) already sent, or "".
func (r RoomTx) Txn(user, device, txn string) (string, error) {
	b, err := r.bucket(roomTxnsStore, false)
	if err != nil || b == nil {
		return "", err
	}
	k := roomTxnKey(user, device, txn)
	if len(k) > bbolt.MaxKeySize {
		return "", nil
	}
	return string(b.Get(k)), nil
}

// PutTxn records that (user, device, txn) sent eventID.
func (r RoomTx) PutTxn(user, device, txn, eventID string) error {
	b, err := r.bucket(roomTxnsStore, true)
	if err != nil {
		return err
	}
	k := roomTxnKey(user, device, txn)
	if len(k) > bbolt.MaxKeySize {
		return fmt.Errorf("storage: room %s: transaction key of %d bytes: %w", r.identity, len(k), ErrBadKey)
	}
	return b.Put(k, []byte(eventID))
}

func roomReceiptKey(k RoomReceiptKey) []byte {
	out := make([]byte, 0, len(k.Type)+len(k.Thread)+len(k.User)+2)
	out = append(out, k.Type...)
	out = append(out, 0)
	out = append(out, k.Thread...)
	out = append(out, 0)
	return append(out, k.User...)
}

// Receipts calls fn for every stored receipt.
func (r RoomTx) Receipts(fn func(k RoomReceiptKey, rc RoomReceipt) error) error {
	b, err := r.bucket(roomReceiptsStore, false)
	if err != nil || b == nil {
		return err
	}
	return b.ForEach(func(k, v []byte) error {
		parts := bytes.SplitN(k, []byte{0}, 3)
		if len(parts) != 3 {
			return fmt.Errorf("storage: room %s: malformed receipt key %q", r.identity, k)
		}
		var rc RoomReceipt
		if err := json.Unmarshal(v, &rc); err != nil {
			return fmt.Errorf("storage: room %s: decode receipt: %w", r.identity, err)
		}
		return fn(RoomReceiptKey{Type: string(parts[0]), Thread: string(parts[1]), User: string(parts[2])}, rc)
	})
}

// PutReceipt stores a receipt, replacing the previous one of its slot.
func (r RoomTx) PutReceipt(k RoomReceiptKey, rc RoomReceipt) error {
	b, err := r.bucket(roomReceiptsStore, true)
	if err != nil {
		return err
	}
	key := roomReceiptKey(k)
	if len(key) > bbolt.MaxKeySize {
		return fmt.Errorf("storage: room %s: receipt key of %d bytes: %w", r.identity, len(key), ErrBadKey)
	}
	v, err := json.Marshal(rc)
	if err != nil {
		return fmt.Errorf("storage: room %s: encode receipt: %w", r.identity, err)
	}
	return b.Put(key, v)
}

// DeleteReceipt removes a receipt slot.
func (r RoomTx) DeleteReceipt(k RoomReceiptKey) error {
	b, err := r.bucket(roomReceiptsStore, false)
	if err != nil || b == nil {
		return err
	}
	return b.Delete(roomReceiptKey(k))
}

// Aliases returns the room's local aliases in byte order.
func (r RoomTx) Aliases() ([]string, error) {
	b, err := r.bucket(roomAliasesStore, false)
	if err != nil || b == nil {
		return nil, err
	}
	var out []string
	err = b.ForEach(func(k, _ []byte) error {
		out = append(out, string(k))
		return nil
	})
	return out, err
}

// PutAlias adds a local alias to the room's list.
func (r RoomTx) PutAlias(alias string) error {
	b, err := r.bucket(roomAliasesStore, true)
	if err != nil {
		return err
	}
	if alias == "" || len(alias) > bbolt.MaxKeySize {
		return fmt.Errorf("storage: room %s: alias of %d bytes: %w", r.identity, len(alias), ErrBadKey)
	}
	return b.Put([]byte(alias), nil)
}

// DeleteAlias removes a local alias from the room's list.
func (r RoomTx) DeleteAlias(alias string) error {
	b, err := r.bucket(roomAliasesStore, false)
	if err != nil || b == nil || alias == "" || len(alias) > bbolt.MaxKeySize {
		return err
	}
	return b.Delete([]byte(alias))
}
