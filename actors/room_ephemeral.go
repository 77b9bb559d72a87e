package actors

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

const (
	// maxTypingTimeout caps how long one request marks a user as typing.
	maxTypingTimeout = 120 * time.Second
	// maxThreadReceipts bounds the threaded receipts kept per user and type.
	maxThreadReceipts = 64
)

// Receipt types the room stores.
const (
	receiptRead        = "m.read"
	receiptReadPrivate = "m.read.private"
)

// setTyping starts or stops a user's typing notification. A Typing with no
// user is the room's own timer: it sweeps expired notifications.
func (r *roomActor) setTyping(m *pb.Typing) (*pb.Empty, error) {
	if m.UserId == "" {
		r.sweepTyping()
		return &pb.Empty{}, nil
	}
	if err := r.mustExist(); err != nil {
		return nil, err
	}
	if r.membershipOf(m.UserId) != eventgraph.MembershipJoin {
		return nil, ErrForbidden("user %s is not in room %s", m.UserId, r.roomID)
	}
	_, was := r.typing[m.UserId]
	if m.Typing {
		d := time.Duration(m.TimeoutMs) * time.Millisecond
		if d <= 0 || d > maxTypingTimeout {
			d = maxTypingTimeout
		}
		until := r.env.Now().Add(d)
		r.typing[m.UserId] = until
		r.scheduleSweep(until)
	} else {
		delete(r.typing, m.UserId)
	}
	if was != m.Typing {
		r.typingPos = r.nextEphemeral()
		r.notifyEphemeral("")
	}
	return &pb.Empty{}, nil
}

// scheduleSweep makes sure the timer fires by until.
func (r *roomActor) scheduleSweep(until time.Time) {
	if r.sweep != nil && !r.sweepAt.After(until) {
		return
	}
	if r.sweep != nil {
		r.sweep.Stop()
	}
	router, roomID := r.env.Router, r.roomID
	r.sweepAt = until
	r.sweep = time.AfterFunc(until.Sub(r.env.Now())+10*time.Millisecond, func() {
		router.Send(&pb.Typing{RoomId: roomID})
	})
}

// sweepTyping drops expired typing notifications and reschedules the timer.
func (r *roomActor) sweepTyping() {
	r.sweep = nil
	now := r.env.Now()
	changed := false
	var next time.Time
	for u, until := range r.typing {
		if !until.After(now) {
			delete(r.typing, u)
			changed = true
		} else if next.IsZero() || until.Before(next) {
			next = until
		}
	}
	if !next.IsZero() {
		r.scheduleSweep(next)
	}
	if changed {
		r.typingPos = r.nextEphemeral()
		r.notifyEphemeral("")
	}
}

// setReceipt stores a receipt. m.read is shown to every member, m.read.private
// only to its owner.
func (r *roomActor) setReceipt(m *pb.Receipt) (*pb.Empty, error) {
	if err := r.mustExist(); err != nil {
		return nil, err
	}
	if m.ReceiptType != receiptRead && m.ReceiptType != receiptReadPrivate {
		return nil, ErrInvalidParam("unsupported receipt type %q", m.ReceiptType)
	}
	if r.membershipOf(m.UserId) != eventgraph.MembershipJoin {
		return nil, ErrForbidden("user %s is not in room %s", m.UserId, r.roomID)
	}
	var known bool
	err := r.env.Partition.View(func(tx *bbolt.Tx) error {
		rec, err := storage.Room(tx, r.env.Identity).Event(m.EventId)
		known = rec != nil
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("room %s: look up receipt event: %w", r.roomID, err)
	}
	if !known {
		return nil, ErrNotFound("event not found")
	}
	key := storage.RoomReceiptKey{Type: m.ReceiptType, Thread: m.ThreadId, User: m.UserId}
	if old, ok := r.receipts[key]; ok && old.EventID == m.EventId {
		return &pb.Empty{}, nil
	}
	ts := m.Ts
	if ts == 0 {
		ts = r.env.NowMillis()
	}
	eph := max(r.ephPos+1, uint64(max(r.env.NowMillis(), 0)))
	rc := storage.RoomReceipt{EventID: m.EventId, TS: ts, EphemeralPos: eph}
	// Keep the threaded receipts of one user and type bounded: the oldest goes.
	var evict *storage.RoomReceiptKey
	if m.ThreadId != "" {
		n := 0
		var oldest storage.RoomReceiptKey
		var oldestPos uint64
		for k, v := range r.receipts {
			if k.User == m.UserId && k.Type == m.ReceiptType && k.Thread != "" && k != key {
				n++
				if oldestPos == 0 || v.EphemeralPos < oldestPos {
					oldest, oldestPos = k, v.EphemeralPos
				}
			}
		}
		if n >= maxThreadReceipts {
			evict = &oldest
		}
	}
	identity := r.env.Identity
	err = r.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, identity)
		if evict != nil {
			if err := rt.DeleteReceipt(*evict); err != nil {
				return err
			}
		}
		return rt.PutReceipt(key, rc)
	})
	if err != nil {
		return nil, fmt.Errorf("room %s: store receipt: %w", r.roomID, err)
	}
	if evict != nil {
		delete(r.receipts, *evict)
	}
	r.receipts[key] = rc
	r.ephPos = eph
	if m.ReceiptType == receiptReadPrivate {
		r.notifyEphemeral(m.UserId)
	} else {
		r.notifyEphemeral("")
	}
	return &pb.Empty{}, nil
}

// syncEphemeral is the ephemeral events of a joined room for user: m.typing
// when it changed since ephemeralFrom (or on an initial sync while someone
// types), m.receipt with the receipts set since ephemeralFrom (all of them
// on an initial sync), leaving out other users' private receipts.
func (r *roomActor) syncEphemeral(user string, ephemeralFrom uint64, initial bool) []json.RawMessage {
	var out []json.RawMessage
	if (initial && len(r.typing) > 0) || (!initial && r.typingPos > ephemeralFrom) {
		users := make([]string, 0, len(r.typing))
		for u := range r.typing {
			users = append(users, u)
		}
		sort.Strings(users)
		raw, _ := json.Marshal(map[string]any{"type": "m.typing", "content": map[string]any{"user_ids": users}})
		out = append(out, raw)
	}
	content := map[string]map[string]map[string]map[string]any{}
	for k, rc := range r.receipts {
		if !initial && rc.EphemeralPos <= ephemeralFrom {
			continue
		}
		if k.Type == receiptReadPrivate && k.User != user {
			continue
		}
		byType := content[rc.EventID]
		if byType == nil {
			byType = map[string]map[string]map[string]any{}
			content[rc.EventID] = byType
		}
		byUser := byType[k.Type]
		if byUser == nil {
			byUser = map[string]map[string]any{}
			byType[k.Type] = byUser
		}
		entry := map[string]any{"ts": rc.TS}
		if k.Thread != "" {
			entry["thread_id"] = k.Thread
		}
		byUser[k.User] = entry
	}
	if len(content) > 0 {
		raw, _ := json.Marshal(map[string]any{"type": "m.receipt", "content": content})
		out = append(out, raw)
	}
	return out
}
