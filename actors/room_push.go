package actors

import (
	"encoding/json"
	"log/slog"
	"math"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

// sendPushNotices tells every local joined member but the sender about
// each committed event, with what their push rules need of the room (see
// user_push.go): the user's actor owns the rules and does the evaluating,
// and any push gateway request, outside this actor. The room's current
// state stands in for the state at each event of the batch.
func (r *roomActor) sendPushNotices(b *batch) {
	if len(b.events) == 0 {
		return
	}
	var locals []string
	joined := 0
	for user, m := range r.members {
		if m.Membership != eventgraph.MembershipJoin {
			continue
		}
		joined++
		if r.isLocal(user) {
			locals = append(locals, user)
		}
	}
	if len(locals) == 0 {
		return
	}
	pl, err := r.powerLevels()
	if err != nil {
		r.env.Log.Error("room: push notices", slog.Any("err", err))
		return
	}
	notifs := pl.Notifications()
	roomName := r.stateString("m.room.name", "", "name")
	for _, pe := range b.events {
		ev := pe.ev
		raw, err := ev.ToClientEvent()
		if err != nil {
			continue
		}
		sender := ev.Sender()
		lvl := pl.UserLevel(sender)
		spl := lvl.Value
		if lvl.Infinite {
			spl = math.MaxInt64
		}
		senderName := r.stateString(eventgraph.TypeMember, sender, "displayname")
		for _, user := range locals {
			if user == sender {
				continue
			}
			r.env.Router.Send(&pb.PushNotice{UserId: user, RoomId: r.roomID, Event: raw, MemberCount: int32(joined),
				SenderPowerLevel: spl, NotificationLevels: notifs, SenderDisplayName: senderName, RoomName: roomName,
				DisplayName: r.stateString(eventgraph.TypeMember, user, "displayname")})
		}
	}
}

// stateString is a string property of a current state event's content
// ("" when the event or the property is missing).
func (r *roomActor) stateString(typ, stateKey, prop string) string {
	ev := r.stateEvent(typ, stateKey)
	if ev == nil {
		return ""
	}
	var c map[string]any
	if json.Unmarshal(ev.Content(), &c) != nil {
		return ""
	}
	s, _ := c[prop].(string)
	return s
}
