package actors

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

// maxInitialEvents bounds the events one createRoom may write.
const maxInitialEvents = 200

// createRoom writes a new room's first events in the order of the spec's
// createRoom: create, the creator's join, then the initial state the
// gateway put in order (power levels, canonical alias, preset, initial_state,
// name, topic), then the invites. They are committed together: a room either
// exists with all of them or not at all.
func (r *roomActor) createRoom(m *pb.CreateRoom) (*pb.CreateRoomReply, error) {
	if r.exists {
		return nil, Errorf(http.StatusBadRequest, "M_ROOM_IN_USE", "room already exists")
	}
	rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(m.RoomVersion))
	if !ok {
		return nil, Errorf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "unsupported room version %q", m.RoomVersion)
	}
	if !r.isLocal(m.Creator) {
		return nil, ErrForbidden("only local users create rooms here")
	}
	if len(m.Initial)+len(m.Invite) > maxInitialEvents {
		return nil, ErrInvalidParam("too many initial events")
	}
	// The batch builds with the room's version and reads the create event
	// through the room; both are undone unless the room is committed.
	r.rv = rv
	defer func() {
		if !r.exists {
			r.create, r.rv = nil, nil
		}
	}()
	b := r.newBatch()
	var createEv *eventgraph.Event
	if rv.RoomIDFromCreateEvent {
		if len(m.CreatePdu) == 0 {
			return nil, ErrBadJSON("room version %s needs the create event", rv.ID)
		}
		ev, err := eventgraph.ParseEvent(m.CreatePdu, rv)
		if err != nil {
			return nil, ErrBadJSON("create event: %v", err)
		}
		if rid, err := eventgraph.RoomIDFromCreateEventID(ev.EventID()); err != nil || rid != r.roomID {
			return nil, ErrInvalidParam("create event does not match the room ID")
		}
		if ev.Type() != eventgraph.TypeCreate || !ev.StateKeyEquals("") || ev.Sender() != m.Creator {
			return nil, ErrInvalidParam("not the creator's create event")
		}
		if err := b.authorise(ev); err != nil {
			return nil, invalidRoomState(err)
		}
		b.append(ev, "", "")
		createEv = ev
	} else {
		content := m.CreateContent
		if len(content) == 0 {
			content = json.RawMessage(`{}`)
		}
		ev, err := b.add(eventDraft{Type: eventgraph.TypeCreate, StateKey: strPtr(""), Sender: m.Creator, Content: content}, "", "")
		if err != nil {
			return nil, invalidRoomState(err)
		}
		createEv = ev
	}
	r.create = createEv

	join, err := memberContent(eventgraph.MembershipJoin, m.CreatorProfile, "", false, nil)
	if err != nil {
		return nil, err
	}
	if _, err := b.add(eventDraft{Type: eventgraph.TypeMember, StateKey: strPtr(m.Creator), Sender: m.Creator, Content: join}, "", ""); err != nil {
		return nil, invalidRoomState(err)
	}
	for _, se := range m.Initial {
		d := eventDraft{Type: se.Type, StateKey: strPtr(se.StateKey), Sender: m.Creator, Content: se.Content}
		if _, err := b.add(d, "", ""); err != nil {
			return nil, invalidRoomState(err)
		}
	}
	for _, invitee := range m.Invite {
		c, err := memberContent(eventgraph.MembershipInvite, nil, "", m.IsDirect, nil)
		if err != nil {
			return nil, err
		}
		if _, err := b.add(eventDraft{Type: eventgraph.TypeMember, StateKey: strPtr(invitee), Sender: m.Creator, Content: c}, "", ""); err != nil {
			return nil, invalidRoomState(err)
		}
	}
	if err := b.commit(); err != nil {
		return nil, err
	}
	return &pb.CreateRoomReply{RoomId: r.roomID}, nil
}

// invalidRoomState turns an auth or content refusal of createRoom's initial
// events into the spec's 400 M_INVALID_ROOM_STATE; other errors pass.
func invalidRoomState(err error) error {
	var me *MatrixError
	if errors.As(err, &me) && (me.ErrCode == "M_FORBIDDEN" || me.ErrCode == "M_BAD_JSON") {
		return Errorf(http.StatusBadRequest, "M_INVALID_ROOM_STATE", "initial state refused: %s", me.Message)
	}
	return err
}

// memberContent builds m.room.member content: the membership, the profile
// (displayname, avatar_url) and the optional reason and is_direct, then any
// extra keys the caller gave that do not override those.
func memberContent(membership string, profile []byte, reason string, isDirect bool, extra map[string]json.RawMessage) (json.RawMessage, error) {
	c := map[string]any{}
	for k, v := range extra {
		c[k] = v
	}
	if len(profile) > 0 {
		var p struct {
			DisplayName *string `json:"displayname"`
			AvatarURL   *string `json:"avatar_url"`
		}
		if json.Unmarshal(profile, &p) == nil {
			if p.DisplayName != nil && *p.DisplayName != "" {
				c["displayname"] = *p.DisplayName
			}
			if p.AvatarURL != nil && *p.AvatarURL != "" {
				c["avatar_url"] = *p.AvatarURL
			}
		}
	}
	if reason != "" {
		c["reason"] = reason
	}
	if isDirect {
		c["is_direct"] = true
	}
	c["membership"] = membership
	out, err := json.Marshal(c)
	if err != nil {
		return nil, ErrBadJSON("member content: %v", err)
	}
	return out, nil
}
