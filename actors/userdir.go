package actors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// userDirActor is the user directory (identity userdir/local): the single
// writer of an index of which users are joined to which rooms, which rooms
// are public (join rule public, or history world-readable), and each user's
// display name and avatar as their latest join showed them. Rooms feed it
// with a UserDirUpdate after each committed membership or visibility change.
//
// A search matches the user ID or display name (case-insensitive substring)
// of every user who shares a room with the searcher or is in a public room,
// the visibility Synapse applies by default. It scans the index in memory:
// cost grows with the number of users the server knows.
type userDirActor struct {
	env      *Env
	loadErr  error
	profiles map[string]storage.UserDirProfile
	rooms    map[string]*udRoom
	// userRooms are the rooms each user is joined to.
	userRooms map[string]map[string]bool
}

type udRoom struct {
	public  bool
	members map[string]bool
}

const (
	defaultUserDirLimit = 10
	maxUserDirResults   = 50
)

// NewUserDir makes the user directory actor.
func NewUserDir(env *Env) actor.Actor { return &userDirActor{env: env} }

func (d *userDirActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if d.env.IdleTimeout > 0 {
			ctx.SetReceiveTimeout(d.env.IdleTimeout)
		}
		if d.loadErr = d.load(); d.loadErr != nil {
			d.env.Log.Error("userdir: load failed", slog.Any("err", d.loadErr))
		}
	case *actor.ReceiveTimeout:
		ctx.Send(ctx.Parent(), &pb.Passivate{Identity: d.env.Identity})
	case *pb.UserDirUpdate:
		err := d.loadErr
		if err == nil {
			err = d.update(m)
		}
		if err != nil {
			d.env.Log.Warn("userdir: update failed", slog.String("op", m.Op), slog.Any("err", err))
		}
		if ctx.Sender() != nil {
			if err != nil {
				ctx.Respond(ToPB(err))
			} else {
				ctx.Respond(&pb.Empty{})
			}
		}
	case *pb.UserDirSearch:
		if ctx.Sender() == nil {
			return
		}
		if d.loadErr != nil {
			ctx.Respond(ToPB(ErrUnknown("user directory unavailable")))
			return
		}
		res, err := d.search(m)
		if err != nil {
			var me *MatrixError
			if !errors.As(err, &me) {
				d.env.Log.Error("userdir: search failed", slog.Any("err", err))
			}
			ctx.Respond(ToPB(err))
			return
		}
		ctx.Respond(res)
	}
}

func (d *userDirActor) load() error {
	d.profiles = map[string]storage.UserDirProfile{}
	d.rooms = map[string]*udRoom{}
	d.userRooms = map[string]map[string]bool{}
	return d.env.Partition.View(func(tx *bbolt.Tx) error {
		return storage.UserDir(tx, d.env.Identity).Load(
			func(u string, p storage.UserDirProfile) { d.profiles[u] = p },
			func(id string, r storage.UserDirRoom) { d.room(id).public = r.Public },
			func(room, user string) { d.join(room, user) })
	})
}

func (d *userDirActor) room(id string) *udRoom {
	r := d.rooms[id]
	if r == nil {
		r = &udRoom{members: map[string]bool{}}
		d.rooms[id] = r
	}
	return r
}

func (d *userDirActor) join(room, user string) {
	d.room(room).members[user] = true
	if d.userRooms[user] == nil {
		d.userRooms[user] = map[string]bool{}
	}
	d.userRooms[user][room] = true
}

func (d *userDirActor) leave(room, user string) {
	if r := d.rooms[room]; r != nil {
		delete(r.members, user)
	}
	if ur := d.userRooms[user]; ur != nil {
		delete(ur, room)
		if len(ur) == 0 {
			delete(d.userRooms, user)
		}
	}
}

// update persists one change, then applies it to memory.
func (d *userDirActor) update(m *pb.UserDirUpdate) error {
	if m.RoomId == "" || len(m.RoomId) > maxIDBytes || len(m.UserId) > maxIDBytes {
		return ErrInvalidParam("invalid user directory update")
	}
	identity := d.env.Identity
	switch m.Op {
	case "room":
		err := d.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
			return storage.UserDir(tx, identity).PutRoom(m.RoomId, &storage.UserDirRoom{Public: m.Public})
		})
		if err != nil {
			return fmt.Errorf("userdir: room %s: %w", m.RoomId, err)
		}
		d.room(m.RoomId).public = m.Public
	case "member":
		if m.UserId == "" {
			return ErrInvalidParam("user_id is required")
		}
		joined := m.Membership == eventgraph.MembershipJoin
		_, wasIn := d.userRooms[m.UserId][m.RoomId]
		leftAll := !joined && wasIn && len(d.userRooms[m.UserId]) == 1
		p := storage.UserDirProfile{DisplayName: m.DisplayName, AvatarURL: m.AvatarUrl}
		err := d.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
			ud := storage.UserDir(tx, identity)
			if err := ud.PutRoom(m.RoomId, &storage.UserDirRoom{Public: m.Public}); err != nil {
				return err
			}
			if err := ud.SetMember(m.RoomId, m.UserId, joined); err != nil {
				return err
			}
			switch {
			case joined:
				return ud.PutProfile(m.UserId, &p)
			case leftAll:
				return ud.PutProfile(m.UserId, nil)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("userdir: member %s of %s: %w", m.UserId, m.RoomId, err)
		}
		d.room(m.RoomId).public = m.Public
		if joined {
			d.join(m.RoomId, m.UserId)
			d.profiles[m.UserId] = p
		} else {
			d.leave(m.RoomId, m.UserId)
			if leftAll {
				delete(d.profiles, m.UserId)
			}
		}
	default:
		return ErrInvalidParam("unknown user directory operation %q", m.Op)
	}
	return nil
}

// search answers /user_directory/search.
func (d *userDirActor) search(m *pb.UserDirSearch) (*pb.RoomQueryReply, error) {
	limit := int(m.Limit)
	if limit <= 0 {
		limit = defaultUserDirLimit
	}
	limit = min(limit, maxUserDirResults)
	term := strings.ToLower(strings.TrimSpace(m.Term))
	mine := d.userRooms[m.Searcher]
	type result struct {
		UserID      string `json:"user_id"`
		DisplayName string `json:"display_name,omitempty"`
		AvatarURL   string `json:"avatar_url,omitempty"`
	}
	var hits []result
	for user, rooms := range d.userRooms {
		p := d.profiles[user]
		if term != "" && !strings.Contains(strings.ToLower(user), term) && !strings.Contains(strings.ToLower(p.DisplayName), term) {
			continue
		}
		visible := false
		for room := range rooms {
			if mine[room] || d.rooms[room].public {
				visible = true
				break
			}
		}
		if visible {
			hits = append(hits, result{UserID: user, DisplayName: p.DisplayName, AvatarURL: p.AvatarURL})
		}
	}
	// Exact and prefix matches first, then by display name or ID.
	rank := func(r result) int {
		id, name := strings.ToLower(r.UserID), strings.ToLower(r.DisplayName)
		switch {
		case name == term || strings.TrimPrefix(id, "@") == term:
			return 0
		case strings.HasPrefix(name, term) || strings.HasPrefix(strings.TrimPrefix(id, "@"), term):
			return 1
		}
		return 2
	}
	sort.Slice(hits, func(i, j int) bool {
		ri, rj := rank(hits[i]), rank(hits[j])
		if ri != rj {
			return ri < rj
		}
		return hits[i].UserID < hits[j].UserID
	})
	limited := len(hits) > limit
	if limited {
		hits = hits[:limit]
	}
	if hits == nil {
		hits = []result{}
	}
	raw, err := json.Marshal(map[string]any{"results": hits, "limited": limited})
	if err != nil {
		return nil, fmt.Errorf("userdir: encode: %w", err)
	}
	return &pb.RoomQueryReply{Json: raw}, nil
}

// ---- the room's side ----

// roomIsPublic is whether the user directory treats the room as public.
func (r *roomActor) roomIsPublic() bool {
	return eventgraph.JoinRule(r.stateEvent(eventgraph.TypeJoinRules, "")) == eventgraph.JoinRulePublic ||
		historyVisibility(r.stateEvent(hvKey.Type, "")) == hvWorldReadable
}

// notifyUserDir tells the user directory about the batch's membership
// changes, and about every member when the room's publicness changed.
func (r *roomActor) notifyUserDir(b *batch) {
	public := r.roomIsPublic()
	visChanged := false
	for _, pe := range b.events {
		ev := pe.ev
		if !ev.IsState() {
			continue
		}
		switch ev.Type() {
		case eventgraph.TypeMember:
			var c struct {
				Membership  string `json:"membership"`
				DisplayName string `json:"displayname"`
				AvatarURL   string `json:"avatar_url"`
			}
			_ = json.Unmarshal(ev.Content(), &c)
			r.env.Router.Send(&pb.UserDirUpdate{Op: "member", RoomId: r.roomID, UserId: *ev.StateKey(),
				Membership: c.Membership, DisplayName: c.DisplayName, AvatarUrl: c.AvatarURL, Public: public})
		case eventgraph.TypeJoinRules, hvKey.Type:
			visChanged = true
		}
	}
	if visChanged {
		r.env.Router.Send(&pb.UserDirUpdate{Op: "room", RoomId: r.roomID, Public: public})
	}
}
