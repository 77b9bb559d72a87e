package storage

import (
	"encoding/json"
	"fmt"
)

// State groups: the state of a room after any event of its graph.
//
// Federation needs the state after events other than the newest one (to
// authorise an event against the state before it, to resolve forks, to
// answer /state_ids), so every event in the graph names the state group
// holding the state after it. A group is a delta on a parent group, or a full
// copy ("full", no parent) once the chain of deltas grows past a bound, so
// that reading one is a bounded walk and a new state event costs one small
// record rather than a copy of the whole state.
//
//	sgroups   group ID (u64) → StateGroup
const roomGroupsStore = "sgroups"

// StateGroup is one state group.
type StateGroup struct {
	// Parent is the group this one changes; 0 for a full group.
	Parent uint64 `json:"p,omitempty"`
	// Chain counts the deltas between this group and its full ancestor.
	Chain int `json:"c,omitempty"`
	// Entries are the (type, state_key) → event ID changes on the parent
	// (all entries of a full group). An empty EventID removes the key.
	Entries []RoomStateEntry `json:"e"`
}

type stateEntryJSON [3]string

// MarshalJSON writes entries as compact triples.
func (g StateGroup) MarshalJSON() ([]byte, error) {
	es := make([]stateEntryJSON, len(g.Entries))
	for i, e := range g.Entries {
		es[i] = stateEntryJSON{e.Type, e.StateKey, e.EventID}
	}
	return json.Marshal(struct {
		Parent uint64           `json:"p,omitempty"`
		Chain  int              `json:"c,omitempty"`
		E      []stateEntryJSON `json:"e"`
	}{g.Parent, g.Chain, es})
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (g *StateGroup) UnmarshalJSON(b []byte) error {
	var v struct {
		Parent uint64           `json:"p,omitempty"`
		Chain  int              `json:"c,omitempty"`
		E      []stateEntryJSON `json:"e"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	g.Parent, g.Chain = v.Parent, v.Chain
	g.Entries = make([]RoomStateEntry, len(v.E))
	for i, e := range v.E {
		g.Entries[i] = RoomStateEntry{Type: e[0], StateKey: e[1], EventID: e[2]}
	}
	return nil
}

// StateGroup reads one state group (ok false when absent).
func (r RoomTx) StateGroup(id uint64) (g StateGroup, ok bool, err error) {
	b, err := r.bucket(roomGroupsStore, false)
	if err != nil || b == nil {
		return g, false, err
	}
	v := b.Get(U64Key(id))
	if v == nil {
		return g, false, nil
	}
	if err := json.Unmarshal(v, &g); err != nil {
		return g, false, fmt.Errorf("storage: room %s: decode state group %d: %w", r.identity, id, err)
	}
	return g, true, nil
}

// PutStateGroup writes one state group.
func (r RoomTx) PutStateGroup(id uint64, g StateGroup) error {
	b, err := r.bucket(roomGroupsStore, true)
	if err != nil {
		return err
	}
	v, err := json.Marshal(g)
	if err != nil {
		return fmt.Errorf("storage: room %s: encode state group %d: %w", r.identity, id, err)
	}
	return b.Put(U64Key(id), v)
}

// DeleteState removes (typ, stateKey) from the current state.
func (r RoomTx) DeleteState(typ, stateKey string) error {
	b, err := r.bucket(roomStateStore, true)
	if err != nil {
		return err
	}
	return b.Delete(roomStateKey(typ, stateKey))
}

// Outsider memberships: a local user's invite or knock in a room this server
// is not in (its room store has no state), kept as the room actor encodes it.
//
//	outsiders   user ID → membership record (JSON)
const roomOutsidersStore = "outsiders"

// PutOutsider stores user's outsider membership record.
func (r RoomTx) PutOutsider(user string, raw []byte) error {
	b, err := r.bucket(roomOutsidersStore, true)
	if err != nil {
		return err
	}
	return b.Put([]byte(user), raw)
}

// DeleteOutsider forgets user's outsider membership.
func (r RoomTx) DeleteOutsider(user string) error {
	b, err := r.bucket(roomOutsidersStore, false)
	if err != nil || b == nil {
		return err
	}
	return b.Delete([]byte(user))
}

// Outsiders calls fn for each stored outsider membership.
func (r RoomTx) Outsiders(fn func(user string, raw []byte) error) error {
	b, err := r.bucket(roomOutsidersStore, false)
	if err != nil || b == nil {
		return err
	}
	return b.ForEach(func(k, v []byte) error { return fn(string(k), v) })
}

// Pending redactions: a redaction that arrived before the event it redacts
// (fetched later, e.g. by /backfill) waits here for it.
//
//	pendingredactions   target event ID → redaction event ID
const roomPendingRedactionsStore = "pendingredactions"

// PendingRedaction returns the redaction waiting for target ("" if none).
func (r RoomTx) PendingRedaction(target string) (string, error) {
	b, err := r.bucket(roomPendingRedactionsStore, false)
	if err != nil || b == nil || target == "" || len(target) > 1024 {
		return "", err
	}
	return string(b.Get([]byte(target))), nil
}

// PutPendingRedaction records that redaction waits for target.
func (r RoomTx) PutPendingRedaction(target, redaction string) error {
	b, err := r.bucket(roomPendingRedactionsStore, true)
	if err != nil {
		return err
	}
	return b.Put([]byte(target), []byte(redaction))
}

// DeletePendingRedaction forgets the redaction waiting for target.
func (r RoomTx) DeletePendingRedaction(target string) error {
	b, err := r.bucket(roomPendingRedactionsStore, false)
	if err != nil || b == nil {
		return err
	}
	return b.Delete([]byte(target))
}
