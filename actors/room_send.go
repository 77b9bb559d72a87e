package actors

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"

	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// sendEvent sends a message or state event, or a redaction. A repeated
// (sender, device, txn_id) returns the event the first request sent.
func (r *roomActor) sendEvent(m *pb.SendEvent) (*pb.SendEventReply, error) {
	if !r.exists {
		return nil, ErrForbidden("user %s is not in room %s", m.Sender, r.roomID)
	}
	if m.TxnId != "" {
		if rep, err := r.sentTxn(m.Sender, m.DeviceId, m.TxnId); err != nil || rep != nil {
			return rep, err
		}
	}
	d := eventDraft{Type: m.Type, Sender: m.Sender, Content: m.Content}
	if m.IsState {
		d.StateKey = strPtr(m.StateKey)
		// Setting state to what it already is (same sender, same content)
		// answers with the event that set it.
		if cur := r.stateEvent(m.Type, m.StateKey); cur != nil && cur.Sender() == m.Sender && sameJSON(cur.Content(), m.Content) {
			return &pb.SendEventReply{EventId: cur.EventID(), Pos: r.meta.Pos}, nil
		}
	}
	b := r.newBatch()
	if m.Type == eventgraph.TypeRedaction && !m.IsState {
		return r.sendRedaction(b, d, m)
	}
	ev, err := b.add(d, m.DeviceId, m.TxnId)
	if err != nil {
		return nil, err
	}
	if err := b.commit(); err != nil {
		return nil, err
	}
	return &pb.SendEventReply{EventId: ev.EventID(), Pos: r.meta.Pos}, nil
}

// sentTxn returns the reply of an already-sent transaction, or nil.
func (r *roomActor) sentTxn(user, device, txn string) (*pb.SendEventReply, error) {
	var rep *pb.SendEventReply
	err := r.env.Partition.View(func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, r.env.Identity)
		id, err := rt.Txn(user, device, txn)
		if err != nil || id == "" {
			return err
		}
		rec, err := rt.Event(id)
		if err != nil {
			return err
		}
		rep = &pb.SendEventReply{EventId: id}
		if rec != nil {
			rep.Pos = rec.Pos
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("room %s: look up transaction: %w", r.roomID, err)
	}
	return rep, nil
}

// sendRedaction sends an m.room.redaction and applies it to the stored copy
// of its target. Only the target's sender, or a user with the redact power,
// may redact.
func (r *roomActor) sendRedaction(b *batch, d eventDraft, m *pb.SendEvent) (*pb.SendEventReply, error) {
	var content map[string]json.RawMessage
	if err := json.Unmarshal(d.Content, &content); err != nil || content == nil {
		return nil, ErrBadJSON("redaction content must be a JSON object")
	}
	target := m.Redacts
	if target == "" {
		_ = json.Unmarshal(content["redacts"], &target)
	}
	if target == "" {
		return nil, ErrBadJSON("redaction needs the event it redacts")
	}
	// eventgraph writes redacts where the room version keeps it.
	d.Redacts = target
	var rec *storage.RoomEvent
	err := r.env.Partition.View(func(tx *bbolt.Tx) error {
		var err error
		rec, err = storage.Room(tx, r.env.Identity).Event(target)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("room %s: load redaction target: %w", r.roomID, err)
	}
	if rec == nil {
		return nil, ErrNotFound("event not found")
	}
	tev, err := eventgraph.NewEventFromTrustedJSON(rec.PDU, r.rv, target)
	if err != nil {
		return nil, fmt.Errorf("room %s: parse redaction target: %w", r.roomID, err)
	}
	if tev.Sender() != d.Sender {
		pl, err := r.powerLevels()
		if err != nil {
			return nil, err
		}
		if !pl.UserLevel(d.Sender).AtLeast(pl.Redact()) {
			return nil, ErrForbidden("you may only redact your own events")
		}
	}
	ev, err := b.add(d, m.DeviceId, m.TxnId)
	if err != nil {
		return nil, err
	}
	if err := b.redact(target, rec, ev.EventID()); err != nil {
		return nil, err
	}
	if err := b.commit(); err != nil {
		return nil, err
	}
	return &pb.SendEventReply{EventId: ev.EventID(), Pos: r.meta.Pos}, nil
}

// membershipExtraDenied are content keys a client may not set through
// extra_content: the server decides them.
var membershipExtraDenied = map[string]bool{
	"membership": true, "join_authorised_via_users_server": true, "third_party_invite": true,
}

// membership changes a membership: join (also accepting an invite), invite,
// leave (also rejecting an invite and retracting a knock), kick (leave of
// another user), ban, unban and knock. The auth rules decide who may; the
// room only adds the checks the client-server API names on top.
func (r *roomActor) membership(m *pb.Membership) (*pb.SendEventReply, error) {
	target := m.Target
	if target == "" {
		target = m.Sender
	}
	if !r.exists {
		if m.Membership == eventgraph.MembershipJoin || m.Membership == eventgraph.MembershipKnock {
			return nil, ErrNotFound("room not found")
		}
		return nil, ErrForbidden("user %s is not in room %s", m.Sender, r.roomID)
	}
	extra := map[string]json.RawMessage{}
	if len(m.ExtraContent) > 0 {
		if err := json.Unmarshal(m.ExtraContent, &extra); err != nil {
			return nil, ErrBadJSON("extra member content must be a JSON object")
		}
		for k := range extra {
			if membershipExtraDenied[k] {
				delete(extra, k)
			}
		}
	}
	cur := r.members[target]
	membership := m.Membership
	var content json.RawMessage
	var err error
	switch m.Membership {
	case eventgraph.MembershipJoin:
		if m.Sender != target {
			return nil, ErrForbidden("cannot join another user")
		}
		if err := r.authoriseRestrictedJoin(m, cur, extra); err != nil {
			return nil, err
		}
		content, err = memberContent(membership, m.Profile, m.Reason, false, extra)
	case eventgraph.MembershipInvite:
		if m.Sender == target {
			return nil, ErrForbidden("cannot invite yourself")
		}
		content, err = memberContent(membership, m.Profile, m.Reason, m.IsDirect, extra)
	case eventgraph.MembershipLeave:
		if m.Sender != target {
			switch cur.Membership {
			case eventgraph.MembershipJoin, eventgraph.MembershipInvite, eventgraph.MembershipKnock:
			default:
				return nil, ErrForbidden("the user is not in the room")
			}
		}
		content, err = memberContent(membership, nil, m.Reason, false, extra)
	case "unban":
		if cur.Membership != eventgraph.MembershipBan {
			return nil, ErrForbidden("the user is not banned")
		}
		membership = eventgraph.MembershipLeave
		content, err = memberContent(membership, nil, m.Reason, false, extra)
	case eventgraph.MembershipBan:
		content, err = memberContent(membership, nil, m.Reason, false, extra)
	case eventgraph.MembershipKnock:
		if m.Sender != target {
			return nil, ErrForbidden("cannot knock for another user")
		}
		if !r.rv.Knock {
			return nil, ErrForbidden("room version %s does not support knocking", r.rv.ID)
		}
		content, err = memberContent(membership, m.Profile, m.Reason, false, extra)
	default:
		return nil, ErrInvalidParam("unknown membership %q", m.Membership)
	}
	if err != nil {
		return nil, err
	}
	// Repeating the same change is answered with the event that made it.
	if cur.EventID != "" && cur.Membership == membership {
		if old := r.stateEvents[cur.EventID]; old != nil && old.Sender() == m.Sender && sameJSON(old.Content(), content) {
			return &pb.SendEventReply{EventId: cur.EventID, Pos: r.meta.Pos}, nil
		}
	}
	b := r.newBatch()
	ev, err := b.add(eventDraft{Type: eventgraph.TypeMember, StateKey: strPtr(target), Sender: m.Sender, Content: content}, m.DeviceId, m.TxnId)
	if err != nil {
		return nil, err
	}
	if err := b.commit(); err != nil {
		return nil, err
	}
	return &pb.SendEventReply{EventId: ev.EventID(), Pos: r.meta.Pos}, nil
}

// authoriseRestrictedJoin adds join_authorised_via_users_server for a join
// to a restricted room (v8+) by a user who is neither invited nor joined:
// the gateway found the user joined to m.RestrictedVia, which must be on the
// join rule's allow list, and a local member who may invite authorises it.
func (r *roomActor) authoriseRestrictedJoin(m *pb.Membership, cur memberInfo, extra map[string]json.RawMessage) error {
	if !r.rv.Restricted || m.RestrictedVia == "" {
		return nil
	}
	if cur.Membership == eventgraph.MembershipJoin || cur.Membership == eventgraph.MembershipInvite {
		return nil
	}
	jr := r.stateEvent(eventgraph.TypeJoinRules, "")
	rule := eventgraph.JoinRule(jr)
	if rule != eventgraph.JoinRuleRestricted && !(rule == eventgraph.JoinRuleKnockRestricted && r.rv.KnockRestricted) {
		return nil
	}
	if !containsStr(allowedRooms(jr), m.RestrictedVia) {
		return ErrForbidden("room %s does not grant access to this room", m.RestrictedVia)
	}
	pl, err := r.powerLevels()
	if err != nil {
		return err
	}
	var candidates []string
	for user, mi := range r.members {
		if mi.Membership == eventgraph.MembershipJoin && r.isLocal(user) && pl.UserLevel(user).AtLeast(pl.Invite()) {
			candidates = append(candidates, user)
		}
	}
	if len(candidates) == 0 {
		return ErrForbidden("no user of this server can authorise the join")
	}
	sort.Slice(candidates, func(i, j int) bool {
		if c := pl.UserLevel(candidates[i]).Compare(pl.UserLevel(candidates[j])); c != 0 {
			return c > 0
		}
		return candidates[i] < candidates[j]
	})
	extra["join_authorised_via_users_server"], _ = json.Marshal(candidates[0])
	return nil
}

// allowedRooms lists the room IDs of a join rule's m.room_membership allow
// conditions.
func allowedRooms(jr *eventgraph.Event) []string {
	if jr == nil {
		return nil
	}
	var c struct {
		Allow []struct {
			Type   string `json:"type"`
			RoomID string `json:"room_id"`
		} `json:"allow"`
	}
	if json.Unmarshal(jr.Content(), &c) != nil {
		return nil
	}
	var out []string
	for _, a := range c.Allow {
		if a.Type == "m.room_membership" && a.RoomID != "" {
			out = append(out, a.RoomID)
		}
	}
	return out
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// sameJSON compares two JSON values by their canonical form.
func sameJSON(a, b []byte) bool {
	ca, err1 := eventgraph.CanonicalJSONLenient(a)
	cb, err2 := eventgraph.CanonicalJSONLenient(b)
	return err1 == nil && err2 == nil && bytes.Equal(ca, cb)
}

// publish reads or sets the room's visibility in the public directory.
func (r *roomActor) publish(m *pb.RoomPublish) (*pb.RoomPublishReply, error) {
	if err := r.mustExist(); err != nil {
		return nil, err
	}
	vis := func() string {
		if r.meta.Published {
			return "public"
		}
		return "private"
	}
	if m.Visibility == "" {
		return &pb.RoomPublishReply{Visibility: vis()}, nil
	}
	if m.Visibility != "public" && m.Visibility != "private" {
		return nil, ErrInvalidParam("visibility must be public or private")
	}
	pl, err := r.powerLevels()
	if err != nil {
		return nil, err
	}
	if r.membershipOf(m.UserId) != eventgraph.MembershipJoin ||
		!pl.UserLevel(m.UserId).AtLeast(pl.EventLevel("m.room.canonical_alias", true)) {
		return nil, ErrForbidden("you need the power to set the room's canonical alias to change its visibility")
	}
	want := m.Visibility == "public"
	if want != r.meta.Published {
		b := r.newBatch()
		b.published = &want
		if err := b.commit(); err != nil {
			return nil, err
		}
		if want {
			r.sendDirectoryRefresh()
		} else {
			r.env.Router.Send(&pb.DirectoryOp{Op: "unpublish", RoomId: r.roomID, Pos: r.meta.Pos})
		}
	}
	summary, err := json.Marshal(r.summary())
	if err != nil {
		return nil, fmt.Errorf("room %s: encode summary: %w", r.roomID, err)
	}
	return &pb.RoomPublishReply{Visibility: vis(), Summary: summary, Pos: r.meta.Pos}, nil
}

// updateAlias adds or removes one of the room's local aliases.
func (r *roomActor) updateAlias(m *pb.RoomAliasUpdate) (*pb.Empty, error) {
	if err := r.mustExist(); err != nil {
		return nil, err
	}
	if m.Alias == "" || len(m.Alias) > maxIDBytes {
		return nil, ErrInvalidParam("invalid alias")
	}
	identity, alias, remove := r.env.Identity, m.Alias, m.Remove
	err := r.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, identity)
		if remove {
			return rt.DeleteAlias(alias)
		}
		return rt.PutAlias(alias)
	})
	if err != nil {
		return nil, fmt.Errorf("room %s: update alias: %w", r.roomID, err)
	}
	return &pb.Empty{}, nil
}
