package actors

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// Presence of other users (spec: "Presence"). When a user's visible
// presence (state or status message, not a mere activity bump) changes, its
// user actor fans the change out to the user actors of the local users
// sharing a joined room with it (PresenceNotice); each keeps the latest
// presence per user it was told about and reports the changes since a sync's
// record in that sync's plan. The same fan-out sends an m.presence EDU to
// every other server with a member in those rooms, and tells each such
// server's inbound actor (fedtxn/<server>, actors/fedtxn.go) in which rooms
// its users are, which is how their presence finds its way to local users.
//
// Fan-outs are coalesced: at most one is in flight per user, changes made
// meanwhile are sent as one follow-up carrying the latest state, and none is
// sent when what peers last heard is still true.
//
// The per-observer map is kept in memory only (bounded by maxPeerPresence):
// presence is ephemeral and a lost entry costs at most one missed change on
// an incremental sync after the actor passivated or moved; an initial sync
// asks each peer afresh (the gateway does). Automatic transitions run on a
// timer in the user actor: online becomes unavailable after presenceIdleAfter
// without activity (a sync or a presence update), and anything but offline
// becomes offline once no sync has been open for presenceOfflineAfter. Other
// requests (sending messages, …) do not reach the user actor and do not
// count as activity.
const (
	presenceIdleAfter     = 5 * time.Minute
	presenceOfflineAfter  = 30 * time.Second
	maxPeerPresence       = 1000
	presenceFanoutTimeout = 30 * time.Second
)

// visiblePresence is what other users see of a presence.
type visiblePresence struct {
	state     string
	statusMsg string
	hasStatus bool
}

func visibleOf(p *storage.Presence) visiblePresence {
	if p == nil {
		return visiblePresence{state: "offline"}
	}
	v := visiblePresence{state: p.State}
	if p.StatusMsg != nil {
		v.statusMsg, v.hasStatus = *p.StatusMsg, true
	}
	return v
}

// presenceCoalescer decides when a fan-out starts: one at a time, a change
// during a fan-out yields one follow-up, and nothing is sent when peers
// already hold the current presence.
type presenceCoalescer struct {
	inFlight bool
	pending  bool
	sent     visiblePresence
}

// changed is called with the current presence after it changed; it
// reports whether a fan-out of cur is to start now.
func (c *presenceCoalescer) changed(cur visiblePresence) bool {
	if c.inFlight {
		c.pending = true
		return false
	}
	if c.sent == cur {
		return false
	}
	c.inFlight, c.sent = true, cur
	return true
}

// done is called when a fan-out has been sent; it reports whether a
// follow-up of cur is to start now.
func (c *presenceCoalescer) done(cur visiblePresence) bool {
	c.inFlight = false
	if !c.pending {
		return false
	}
	c.pending = false
	return c.changed(cur)
}

type peerPresence struct {
	notice *pb.PresenceNotice
	seq    uint64
}

type userPresence struct {
	fanout presenceCoalescer
	// peers is the latest presence of each user sharing a room, by user ID.
	peers map[string]*peerPresence
	// lastSyncTS is when a sync last started or ended (ms).
	lastSyncTS int64
	// auto tells that the current state was set by a timer, so a sync's
	// implicit "online" may end an automatic "unavailable".
	auto    bool
	timer   *time.Timer
	timerAt int64
	gen     uint64
}

// presenceStart sets up presence after load: peers already heard the stored
// presence, and its timers start from now.
func (u *user) presenceStart() {
	u.pres.peers = map[string]*peerPresence{}
	u.pres.lastSyncTS = u.env.NowMillis()
	if u.loadErr != nil || u.st.Account == nil || u.st.Account.Deactivated {
		return
	}
	u.pres.fanout.sent = visibleOf(u.st.Presence)
	u.armPresenceTimer()
}

func (u *user) presenceStop() {
	if u.pres.timer != nil {
		u.pres.timer.Stop()
		u.pres.timer = nil
	}
}

// presenceTimerArmed tells whether an automatic transition is pending (the
// actor then stays active so that it happens).
func (u *user) presenceTimerArmed() bool { return u.pres.timer != nil }

// presenceSynced records sync activity.
func (u *user) presenceSynced() {
	u.pres.lastSyncTS = u.env.NowMillis()
	u.armPresenceTimer()
}

// presenceChanged is called after the user's own presence was written:
// fan out a visible change and (re)arm the timers.
func (u *user) presenceChanged() {
	if u.pres.fanout.changed(visibleOf(u.st.Presence)) {
		u.startPresenceFanout()
	}
	u.armPresenceTimer()
}

// armPresenceTimer makes sure a tick comes no later than the next possible
// automatic transition. An earlier tick is kept: it re-arms when it fires.
func (u *user) armPresenceTimer() {
	if u.loadErr != nil || u.st == nil {
		return
	}
	p := u.st.Presence
	if p == nil || p.State == "offline" || u.st.Account == nil || u.st.Account.Deactivated {
		return
	}
	due := u.pres.lastSyncTS + presenceOfflineAfter.Milliseconds()
	if len(u.sync.parked) > 0 {
		due = u.env.NowMillis() + presenceOfflineAfter.Milliseconds()
	}
	if p.State == "online" {
		due = min(due, p.LastActiveTS+presenceIdleAfter.Milliseconds())
	}
	if u.pres.timer != nil && u.pres.timerAt <= due {
		return
	}
	u.presenceStop()
	u.pres.gen++
	gen, router, userID := u.pres.gen, u.env.Router, u.userID
	wait := time.Duration(max(0, due-u.env.NowMillis())+10) * time.Millisecond
	u.pres.timerAt = due
	u.pres.timer = time.AfterFunc(wait, func() {
		router.Send(&pb.PresenceTick{UserId: userID, Kind: "timer", Gen: gen})
	})
}

func (u *user) presenceTick(ctx actor.Context, m *pb.PresenceTick) {
	if u.loadErr != nil || u.st == nil {
		return
	}
	switch m.Kind {
	case "fanout_done":
		if u.pres.fanout.done(visibleOf(u.st.Presence)) {
			u.startPresenceFanout()
		}
	case "timer":
		if m.Gen == u.pres.gen {
			u.pres.timer = nil
		}
		u.presenceTransitions(ctx)
	case "share":
		u.sharePresence(m.Server)
	}
}

// sharePresence sends server, which has just joined one of the user's
// rooms, the user's current presence (an offline user has none to tell).
func (u *user) sharePresence(server string) {
	if server == "" || server == u.env.Server.ServerName || u.st.Account == nil || u.st.Account.Deactivated {
		return
	}
	c := u.presenceContent()
	if c["presence"] == "offline" {
		return
	}
	edu, err := presenceEDU(u.userID, c)
	if err != nil {
		u.env.Log.Error("user: presence EDU", slog.Any("err", err))
		return
	}
	u.env.Router.Send(&pb.FedEnqueue{Destination: server, Edus: []*pb.FedEDU{edu}})
}

// presenceTransitions applies the automatic transitions that are due. A
// tick is only a prompt to look: a stray or early one changes nothing.
func (u *user) presenceTransitions(ctx actor.Context) {
	if u.loadErr != nil || u.st.Account == nil || u.st.Account.Deactivated {
		return
	}
	p := u.st.Presence
	if p == nil {
		return
	}
	now := u.env.NowMillis()
	state := p.State
	switch {
	case state != "offline" && len(u.sync.parked) == 0 && now-u.pres.lastSyncTS >= presenceOfflineAfter.Milliseconds():
		state = "offline"
	case state == "online" && now-p.LastActiveTS >= presenceIdleAfter.Milliseconds():
		state = "unavailable"
	}
	if state != p.State {
		next := *p
		next.State = state
		meta := u.st.Meta
		meta.Seq++
		next.Seq = meta.Seq
		if err := u.write(func(ut storage.UserTx) error {
			if err := ut.PutPresence(&next); err != nil {
				return err
			}
			return ut.PutMeta(meta)
		}); err != nil {
			u.env.Log.Error("user: automatic presence", slog.String("user", u.userID), slog.Any("err", err))
		} else {
			u.st.Presence, u.st.Meta = &next, meta
			u.pres.auto = true
			u.wakeAll(ctx)
			if u.pres.fanout.changed(visibleOf(u.st.Presence)) {
				u.startPresenceFanout()
			}
		}
	}
	u.armPresenceTimer()
}

// startPresenceFanout sends the current presence to the local users sharing
// a joined room, from a goroutine (it waits on the rooms' answers), and
// tells the actor when it is done.
func (u *user) startPresenceFanout() {
	p := u.st.Presence
	if p == nil {
		return
	}
	c := u.presenceContent()
	notice := &pb.PresenceNotice{Sender: u.userID, Presence: p.State, LastActiveTs: p.LastActiveTS}
	if p.StatusMsg != nil {
		notice.StatusMsg, notice.HasStatusMsg = *p.StatusMsg, true
	}
	notice.CurrentlyActive, _ = c["currently_active"].(bool)
	edu, err := presenceEDU(u.userID, c)
	if err != nil {
		u.env.Log.Error("user: encode presence EDU", slog.String("user", u.userID), slog.Any("err", err))
	}
	rooms := u.roomsWith("join")
	router, server, userID, log := u.env.Router, u.env.Server.ServerName, u.userID, u.env.Log
	go func() {
		defer router.Send(&pb.PresenceTick{UserId: userID, Kind: "fanout_done"})
		ctx, cancel := context.WithTimeout(context.Background(), presenceFanoutTimeout)
		defer cancel()
		members := roomJoinedMembers(ctx, router, userID, rooms, func(room string, err error) {
			log.Warn("user: presence fan-out: room members", slog.String("room", room), slog.Any("err", err))
		})
		sp := splitRoomMembers(members, server)
		delete(sp.local, userID)
		for peer := range sp.local {
			n := proto.Clone(notice).(*pb.PresenceNotice)
			n.UserId = peer
			router.Send(n)
		}
		if edu != nil {
			for _, srv := range slices.Sorted(maps.Keys(sp.remote)) {
				router.Send(&pb.FedEnqueue{Destination: srv, Edus: []*pb.FedEDU{proto.Clone(edu).(*pb.FedEDU)}})
			}
		}
		// The remote members' servers' inbound actors learn where those
		// users are, so that their presence reaches this server's members.
		for _, origin := range slices.Sorted(maps.Keys(sp.remote)) {
			router.Send(&pb.FedPresenceRooms{Origin: origin, Users: sp.remote[origin]})
		}
	}()
}

// presenceEDU is the m.presence EDU announcing userID's presence content c
// to other servers; the queues keep only the newest per user.
func presenceEDU(userID string, c map[string]any) (*pb.FedEDU, error) {
	push := map[string]any{"user_id": userID}
	for k, v := range c {
		push[k] = v
	}
	if _, ok := push["currently_active"]; !ok {
		push["currently_active"] = false
	}
	raw, err := json.Marshal(map[string]any{"push": []any{push}})
	if err != nil {
		return nil, err
	}
	return &pb.FedEDU{EduType: "m.presence", Content: raw, Key: userID}, nil
}

// maxPresenceRemoteUsers bounds the remote users one fan-out reports to
// their servers' inbound actors (rooms with more are learnt from other
// local members' fan-outs and the users' typing and receipts).
const maxPresenceRemoteUsers = 2000

// roomMembers is what a fan-out found in the rooms it asked.
type roomMembers struct {
	local map[string]bool
	// remote has, per remote server, its joined users and their rooms.
	remote map[string][]*pb.FedUserRooms
}

// splitRoomMembers sorts the joined members of rooms (room → users) into
// local users and remote users by server.
func splitRoomMembers(members map[string][]string, server string) roomMembers {
	out := roomMembers{local: map[string]bool{}, remote: map[string][]*pb.FedUserRooms{}}
	byUser := map[string]*pb.FedUserRooms{}
	for _, room := range slices.Sorted(maps.Keys(members)) {
		for _, user := range members[room] {
			srv := serverOf(user)
			switch {
			case srv == "":
			case srv == server:
				out.local[user] = true
			default:
				ur := byUser[user]
				if ur == nil {
					if len(byUser) >= maxPresenceRemoteUsers {
						if _, ok := out.remote[srv]; !ok {
							out.remote[srv] = nil // still gets the EDU
						}
						continue
					}
					ur = &pb.FedUserRooms{UserId: user}
					byUser[user] = ur
					out.remote[srv] = append(out.remote[srv], ur)
				}
				ur.RoomIds = append(ur.RoomIds, room)
			}
		}
	}
	return out
}

// presenceNotice stores a peer's presence and wakes the long-polls. The
// sequence move is written so that tokens never name a sequence the actor
// could hand out again after a restart.
func (u *user) presenceNotice(ctx actor.Context, m *pb.PresenceNotice) {
	if u.loadErr != nil || u.st.Account == nil || u.st.Account.Deactivated || m.Sender == "" || m.Sender == u.userID {
		return
	}
	if prev := u.pres.peers[m.Sender]; prev == nil && len(u.pres.peers) >= maxPeerPresence {
		oldest := ""
		var seq uint64
		for id, e := range u.pres.peers {
			if oldest == "" || e.seq < seq {
				oldest, seq = id, e.seq
			}
		}
		delete(u.pres.peers, oldest)
	}
	meta := u.st.Meta
	meta.Seq++
	if err := u.write(func(ut storage.UserTx) error { return ut.PutMeta(meta) }); err != nil {
		u.env.Log.Error("user: presence notice", slog.String("user", u.userID), slog.Any("err", err))
		return
	}
	u.st.Meta = meta
	u.pres.peers[m.Sender] = &peerPresence{notice: m, seq: meta.Seq}
	u.wakeAll(ctx)
}

// presenceEvents are the m.presence events of the plan from since: the
// user's own presence and the peers' changes (initial sync: own only, the
// gateway adds the peers').
func (u *user) presenceEvents(since uint64, initial bool) ([]byte, error) {
	var evs []map[string]any
	if p := u.st.Presence; p != nil && p.Seq > since {
		evs = append(evs, map[string]any{"type": "m.presence", "sender": u.userID, "content": u.presenceContent()})
	}
	if !initial {
		now := u.env.NowMillis()
		for _, id := range slices.Sorted(maps.Keys(u.pres.peers)) {
			e := u.pres.peers[id]
			if e.seq <= since {
				continue
			}
			evs = append(evs, map[string]any{"type": "m.presence", "sender": id, "content": PresenceContent(e.notice, now)})
		}
	}
	if len(evs) == 0 {
		return nil, nil
	}
	return json.Marshal(evs)
}

// PresenceContent is the m.presence content of a notice as of now.
func PresenceContent(n *pb.PresenceNotice, now int64) map[string]any {
	c := map[string]any{"presence": n.Presence, "last_active_ago": max(0, now-n.LastActiveTs)}
	if n.HasStatusMsg {
		c["status_msg"] = n.StatusMsg
	}
	if n.Presence == "online" {
		c["currently_active"] = n.CurrentlyActive
	}
	return c
}
