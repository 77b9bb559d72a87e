package actors

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

const (
	// maxTypingTimeout caps how long one request marks a user as typing.
	maxTypingTimeout = 120 * time.Second
	// remoteTypingTimeout is how long a typing notification received over
	// federation lasts: the EDU carries no timeout, and senders repeat it
	// while their user types (Synapse keeps them as long).
	remoteTypingTimeout = 60 * time.Second
	// typingPing is how often a local user's ongoing typing is sent again
	// to the other servers, so that it outlasts their remoteTypingTimeout.
	typingPing = 40 * time.Second
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
	if err := r.checkEphemeralSender(m.Origin, m.UserId); err != nil {
		return nil, err
	}
	_, was := r.typing[m.UserId]
	if m.Typing {
		d := time.Duration(m.TimeoutMs) * time.Millisecond
		if d <= 0 || d > maxTypingTimeout {
			d = maxTypingTimeout
		}
		if m.Origin != "" {
			d = remoteTypingTimeout
		}
		now := r.env.Now()
		until := now.Add(d)
		r.typing[m.UserId] = until
		r.scheduleSweep(until)
		if m.Origin == "" && d > typingPing && len(r.remoteServers()) > 0 {
			r.scheduleSweep(now.Add(typingPing))
		}
	} else {
		delete(r.typing, m.UserId)
	}
	if was != m.Typing {
		r.typingPos = r.nextEphemeral()
		r.notifyEphemeral("")
	}
	// A local user's every start is sent on (it renews the other servers'
	// timeout); a stop only when it changes something.
	if m.Origin == "" && (m.Typing || was) {
		r.federateTyping(m.UserId, m.Typing)
	}
	return &pb.Empty{}, nil
}

// checkEphemeralSender checks who may set user's typing or receipts: a
// joined local user, or with origin (received over federation, MSC4163) a
// joined user of origin whose server the room's ACL allows. Rooms hearing
// from a remote user tell origin's inbound actor where the user is, so
// that the user's presence reaches this room's members.
func (r *roomActor) checkEphemeralSender(origin, user string) error {
	if origin == "" {
		if !r.isLocal(user) {
			return ErrForbidden("user %s is not a user of this server", user)
		}
	} else {
		if origin == r.env.Server.ServerName || serverOf(user) != origin {
			return ErrForbidden("user %s does not belong to %s", user, origin)
		}
		if !r.aclAllows(origin) {
			return errACLDenied(origin)
		}
	}
	if r.membershipOf(user) != eventgraph.MembershipJoin {
		return ErrForbidden("user %s is not in room %s", user, r.roomID)
	}
	if origin != "" {
		r.env.Router.Send(&pb.FedPresenceRooms{Origin: origin,
			Users: []*pb.FedUserRooms{{UserId: user, RoomIds: []string{r.roomID}}}})
	}
	return nil
}

// federateTyping queues an m.typing EDU for every other server in the room;
// a newer one for the same user replaces it in the queues.
func (r *roomActor) federateTyping(user string, typing bool) {
	servers := r.remoteServers()
	if len(servers) == 0 {
		return
	}
	content, err := json.Marshal(map[string]any{"room_id": r.roomID, "user_id": user, "typing": typing})
	if err != nil {
		r.env.Log.Error("room: encode typing EDU", slog.Any("err", err))
		return
	}
	r.enqueueEDU(servers, &pb.FedEDU{EduType: "m.typing", Content: content, Key: r.roomID + "\x00" + user})
}

// enqueueEDU hands one EDU to the outbound queues of servers.
func (r *roomActor) enqueueEDU(servers []string, edu *pb.FedEDU) {
	for _, srv := range servers {
		r.env.Router.Send(&pb.FedEnqueue{Destination: srv, Edus: []*pb.FedEDU{proto.Clone(edu).(*pb.FedEDU)}})
	}
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
	var stopped []string
	for u, until := range r.typing {
		if !until.After(now) {
			delete(r.typing, u)
			changed = true
			if r.isLocal(u) {
				stopped = append(stopped, u)
			}
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
	sort.Strings(stopped)
	for _, u := range stopped {
		r.federateTyping(u, false)
	}
	// Local users still typing are announced again (and the timer comes
	// back for the next announcement) while other servers are in the room.
	var still []string
	for u, until := range r.typing {
		if r.isLocal(u) && until.After(now) {
			still = append(still, u)
		}
	}
	if len(still) > 0 && len(r.remoteServers()) > 0 {
		sort.Strings(still)
		for _, u := range still {
			r.federateTyping(u, true)
		}
		r.scheduleSweep(now.Add(typingPing))
	}
}

// setReceipt stores a receipt. m.read is shown to every member, m.read.private
// only to its owner.
func (r *roomActor) setReceipt(m *pb.Receipt) (*pb.Empty, error) {
	if err := r.mustExist(); err != nil {
		return nil, err
	}
	if m.ReceiptType != receiptRead && (m.ReceiptType != receiptReadPrivate || m.Origin != "") {
		// Private receipts never travel between servers.
		return nil, ErrInvalidParam("unsupported receipt type %q", m.ReceiptType)
	}
	if err := r.checkEphemeralSender(m.Origin, m.UserId); err != nil {
		return nil, err
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
	if m.Origin == "" && m.ReceiptType == receiptRead {
		r.federateReceipt(key, rc)
	}
	return &pb.Empty{}, nil
}

// federateReceipt queues a local user's public read receipt for every
// other server in the room; a newer one for the same user, room and thread
// replaces it in the queues.
func (r *roomActor) federateReceipt(key storage.RoomReceiptKey, rc storage.RoomReceipt) {
	servers := r.remoteServers()
	if len(servers) == 0 {
		return
	}
	data := map[string]any{"ts": rc.TS}
	if key.Thread != "" {
		data["thread_id"] = key.Thread
	}
	content, err := json.Marshal(map[string]any{r.roomID: map[string]any{key.Type: map[string]any{
		key.User: map[string]any{"event_ids": []string{rc.EventID}, "data": data}}}})
	if err != nil {
		r.env.Log.Error("room: encode receipt EDU", slog.Any("err", err))
		return
	}
	r.enqueueEDU(servers, &pb.FedEDU{EduType: "m.receipt", Content: content,
		Key: r.roomID + "\x00" + key.Type + "\x00" + key.User + "\x00" + key.Thread})
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
