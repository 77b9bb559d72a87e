package actors

import (
	"encoding/json"
	"sort"

	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

const (
	// maxSpaceChildren bounds the m.space.child events one summary returns.
	maxSpaceChildren = 1000
	// maxUpgradeBans bounds the bans an upgrade carries into the new room.
	maxUpgradeBans = 100
)

// spaceRoomChunk is a room as /hierarchy and the room summary API show it:
// the public rooms chunk plus MSC3266's fields.
type spaceRoomChunk struct {
	publicRoomsChunk
	RoomVersion    string   `json:"room_version"`
	AllowedRoomIDs []string `json:"allowed_room_ids,omitempty"`
	Encryption     string   `json:"encryption,omitempty"`
	Membership     string   `json:"membership,omitempty"`
}

// spaceSummary describes the room for a space walk or a room preview, and
// says whether the requester may see it without the gateway's help: a
// member or invitee, a public, knockable or world-readable room. For a
// restricted room the gateway checks allowed_room_ids itself.
func (r *roomActor) spaceSummary(m *pb.RoomSpaceSummary) (*pb.RoomQueryReply, error) {
	if !r.exists {
		return nil, ErrNotFound("room not found")
	}
	c := spaceRoomChunk{publicRoomsChunk: r.summary(), RoomVersion: string(r.rv.ID)}
	jr := r.stateEvent(eventgraph.TypeJoinRules, "")
	switch c.JoinRule {
	case eventgraph.JoinRuleRestricted, eventgraph.JoinRuleKnockRestricted:
		c.AllowedRoomIDs = allowedRooms(jr)
	}
	if enc := r.stateEvent("m.room.encryption", ""); enc != nil {
		var ec struct {
			Algorithm string `json:"algorithm"`
		}
		if json.Unmarshal(enc.Content(), &ec) == nil {
			c.Encryption = ec.Algorithm
		}
	}
	mem := r.membershipOf(m.UserId)
	if m.UserId != "" {
		c.Membership = orLeave(mem)
	}
	accessible := c.WorldReadable
	switch c.JoinRule {
	case eventgraph.JoinRulePublic, eventgraph.JoinRuleKnock, eventgraph.JoinRuleKnockRestricted:
		accessible = true
	}
	if m.UserId != "" && (mem == eventgraph.MembershipJoin || mem == eventgraph.MembershipInvite) {
		accessible = true
	}
	type child struct {
		Content        json.RawMessage `json:"content"`
		OriginServerTS int64           `json:"origin_server_ts"`
		Sender         string          `json:"sender"`
		StateKey       string          `json:"state_key"`
		Type           string          `json:"type"`
	}
	children := []child{}
	for k, id := range r.state {
		if k.Type != "m.space.child" || len(children) == maxSpaceChildren {
			continue
		}
		ev := r.stateEvents[id]
		if ev == nil {
			continue
		}
		var cc struct {
			Via []string `json:"via"`
		}
		if json.Unmarshal(ev.Content(), &cc) != nil || len(cc.Via) == 0 {
			continue
		}
		children = append(children, child{Content: ev.Content(), OriginServerTS: ev.OriginServerTS(),
			Sender: ev.Sender(), StateKey: k.StateKey, Type: k.Type})
	}
	sort.Slice(children, func(i, j int) bool { return children[i].StateKey < children[j].StateKey })
	return r.queryReply("space summary", map[string]any{"room": c, "accessible": accessible, "children_state": children})
}

// upgradeCopied is the state an upgrade carries into the new room (beside
// the power levels and canonical alias, handled on their own).
var upgradeCopied = []string{
	eventgraph.TypeJoinRules, "m.room.history_visibility", "m.room.guest_access", "m.room.name", "m.room.topic",
	"m.room.avatar", "m.room.encryption", "m.room.server_acl", "m.room.related_groups",
}

// upgradeState checks that m.UserId may upgrade the room (send its
// m.room.tombstone while joined) and returns what the new room copies:
// the state of upgradeCopied, power levels, canonical alias, local
// aliases, creators and (up to maxUpgradeBans) the banned users.
func (r *roomActor) upgradeState(m *pb.RoomUpgradeState) (*pb.RoomQueryReply, error) {
	if !r.exists {
		return nil, ErrNotFound("room not found")
	}
	if r.membershipOf(m.UserId) != eventgraph.MembershipJoin {
		return nil, ErrForbidden("user %s is not in room %s", m.UserId, r.roomID)
	}
	pl, err := r.powerLevels()
	if err != nil {
		return nil, err
	}
	if !pl.UserLevel(m.UserId).AtLeast(pl.EventLevel("m.room.tombstone", true)) {
		return nil, ErrForbidden("you may not upgrade this room")
	}
	var createContent map[string]json.RawMessage
	_ = json.Unmarshal(r.create.Content(), &createContent)
	var state []*pb.StateEvent
	for _, t := range upgradeCopied {
		if ev := r.stateEvent(t, ""); ev != nil {
			state = append(state, &pb.StateEvent{Type: t, Content: ev.Content()})
		}
	}
	type stateJSON struct {
		Type     string          `json:"type"`
		StateKey string          `json:"state_key"`
		Content  json.RawMessage `json:"content"`
	}
	out := make([]stateJSON, 0, len(state))
	for _, s := range state {
		out = append(out, stateJSON{Type: s.Type, Content: s.Content})
	}
	var plContent, canonical json.RawMessage
	if ev := r.stateEvent(eventgraph.TypePowerLevels, ""); ev != nil {
		plContent = ev.Content()
	}
	if ev := r.stateEvent("m.room.canonical_alias", ""); ev != nil {
		canonical = ev.Content()
	}
	creators, _ := eventgraph.Creators(r.create)
	bans := []string{}
	for u, mi := range r.members {
		if mi.Membership == eventgraph.MembershipBan && len(bans) < maxUpgradeBans {
			bans = append(bans, u)
		}
	}
	sort.Strings(bans)
	var aliases []string
	err = r.env.Partition.View(func(tx *bbolt.Tx) error {
		var err error
		aliases, err = storage.Room(tx, r.env.Identity).Aliases()
		return err
	})
	if err != nil {
		return nil, err
	}
	return r.queryReply("upgrade state", map[string]any{
		"create_content": createContent, "state": out, "power_levels": plContent,
		"canonical_alias": canonical, "aliases": orNone(aliases), "creators": orNone(creators),
		"room_version": string(r.rv.ID), "last_event": r.meta.Extremities, "bans": bans,
	})
}
