package actors

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"

	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// The room's federation side, shared parts: which servers are in the room,
// sending committed events to them, state groups and server ACLs.

// remoteServers lists the servers other than this one with a joined member.
func (r *roomActor) remoteServers() []string {
	seen := map[string]bool{}
	for user, m := range r.members {
		if m.Membership != eventgraph.MembershipJoin {
			continue
		}
		if s := serverOf(user); s != "" && s != r.env.Server.ServerName {
			seen[s] = true
		}
	}
	out := make([]string, 0, len(seen))
	for s := range seen {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// joinedServers lists every server with a joined member, this one included.
func (r *roomActor) joinedServers() []string {
	out := r.remoteServers()
	for user, m := range r.members {
		if m.Membership == eventgraph.MembershipJoin && r.isLocal(user) {
			out = append(out, r.env.Server.ServerName)
			break
		}
	}
	sort.Strings(out)
	return out
}

// federate sends the batch's events that this server's users sent to every
// other server in the room (before or after the batch), and tells the event
// index where the new events live.
func (r *roomActor) federate(b *batch, before []string) {
	var pdus [][]byte
	if b.noFederate {
		before = nil
	}
	for _, pe := range b.events {
		// A membership event another server made through us (send_join,
		// send_leave, send_knock) is ours to pass on to the rest of the room.
		if (r.isLocal(pe.ev.Sender()) || b.forwardFrom != "") && !b.noFederate {
			pdus = append(pdus, pe.rec.PDU)
		}
	}
	if len(pdus) > 0 {
		dests := map[string]bool{}
		for _, s := range before {
			dests[s] = true
		}
		for _, s := range r.remoteServers() {
			dests[s] = true
		}
		delete(dests, b.forwardFrom)
		for d := range dests {
			r.env.Router.Send(&pb.FedEnqueue{Destination: d, Pdus: pdus, RoomId: r.roomID})
		}
	}
	r.tellPresenceRooms(b)
	r.sharePresenceWithNewServers(before)
	shards := map[string][]string{}
	add := func(id string) {
		sh := pb.EventIndexShard(id)
		shards[sh] = append(shards[sh], id)
	}
	for _, pe := range b.events {
		add(pe.ev.EventID())
	}
	for _, id := range b.storedOrder {
		add(id)
	}
	for sh, ids := range shards {
		r.env.Router.Send(&pb.EventIndexAdd{Shard: sh, RoomId: r.roomID, EventIds: ids})
	}
}

// tellPresenceRooms tells each remote server's transaction actor which of
// its users joined or left the room in this batch (every remote member,
// when the batch started the room here from a send_join answer): an
// m.presence EDU names users, not rooms, and that actor delivers it to the
// local users sharing a room with them.
func (r *roomActor) tellPresenceRooms(b *batch) {
	joined := map[string][]*pb.FedUserRooms{}
	left := map[string][]*pb.FedUserRooms{}
	add := func(to map[string][]*pb.FedUserRooms, user string) {
		if s := serverOf(user); s != "" && s != r.env.Server.ServerName {
			to[s] = append(to[s], &pb.FedUserRooms{UserId: user, RoomIds: []string{r.roomID}})
		}
	}
	if b.bootstrap {
		for user, m := range r.members {
			if m.Membership == eventgraph.MembershipJoin {
				add(joined, user)
			}
		}
	} else {
		for _, pe := range b.events {
			for _, d := range pe.deltas {
				if d.Type != eventgraph.TypeMember {
					continue
				}
				if r.members[d.StateKey].Membership == eventgraph.MembershipJoin {
					add(joined, d.StateKey)
				} else {
					add(left, d.StateKey)
				}
			}
		}
	}
	for origin, users := range joined {
		r.env.Router.Send(&pb.FedPresenceRooms{Origin: origin, Users: users})
	}
	for origin, users := range left {
		r.env.Router.Send(&pb.FedPresenceRooms{Origin: origin, Users: users, Left: true})
	}
}

// sharePresenceWithNewServers asks the local members' user actors to send
// their presence to servers that were not in the room before the batch:
// others' presence reaches a server only when it changes, so a server that
// just joined would otherwise see local users offline until they move.
func (r *roomActor) sharePresenceWithNewServers(before []string) {
	var added []string
	for _, s := range r.remoteServers() {
		if !containsStr(before, s) {
			added = append(added, s)
		}
	}
	if len(added) == 0 {
		return
	}
	for user, m := range r.members {
		if m.Membership != eventgraph.MembershipJoin || !r.isLocal(user) {
			continue
		}
		for _, s := range added {
			r.env.Router.Send(&pb.PresenceTick{UserId: user, Kind: "share", Server: s})
		}
	}
}

// ---- state groups ----

// maxGroupCache bounds the state maps the actor keeps rebuilt.
const maxGroupCache = 16

// groupCacheAdd remembers st as the state of group id (nil: the current
// state, which the actor keeps anyway, so the cache entry is dropped).
func (r *roomActor) groupCacheAdd(id uint64, st eventgraph.StateMap) {
	if r.groupCache == nil {
		r.groupCache = map[uint64]eventgraph.StateMap{}
	}
	if st == nil {
		delete(r.groupCache, id)
		return
	}
	if len(r.groupCache) >= maxGroupCache {
		clear(r.groupCache)
	}
	r.groupCache[id] = st
}

// groupState rebuilds the state of group id. The map is shared: callers
// must not change it.
func (b *batch) groupState(id uint64) (eventgraph.StateMap, error) {
	r := b.r
	if id == b.group {
		return b.current(), nil
	}
	if st, ok := r.groupCache[id]; ok {
		return st, nil
	}
	var chain []storage.StateGroup
	var base eventgraph.StateMap
	for cur := id; ; {
		if st, ok := r.groupCache[cur]; ok && cur != id {
			base = st
			break
		}
		g, ok := b.groups[cur]
		if !ok {
			if b.rt == nil {
				return nil, fmt.Errorf("room %s: state group %d read without a transaction", r.roomID, cur)
			}
			var err error
			g, ok, err = b.rt.StateGroup(cur)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, fmt.Errorf("room %s: state group %d missing", r.roomID, cur)
			}
		}
		chain = append(chain, g)
		if g.Parent == 0 {
			break
		}
		if len(chain) > maxGroupChain+1 {
			return nil, fmt.Errorf("room %s: state group %d: chain too long", r.roomID, id)
		}
		cur = g.Parent
	}
	st := eventgraph.StateMap{}
	for k, v := range base {
		st[k] = v
	}
	for i := len(chain) - 1; i >= 0; i-- {
		for _, e := range chain[i].Entries {
			k := eventgraph.StateKey{Type: e.Type, StateKey: e.StateKey}
			if e.EventID == "" {
				delete(st, k)
			} else {
				st[k] = e.EventID
			}
		}
	}
	r.groupCacheAdd(id, st)
	return st, nil
}

// groupChainOf is the chain length of group id.
func (b *batch) groupChainOf(id uint64) int {
	if id == b.group {
		return b.groupChain
	}
	if g, ok := b.groups[id]; ok {
		return g.Chain
	}
	if b.rt != nil {
		if g, ok, err := b.rt.StateGroup(id); err == nil && ok {
			return g.Chain
		}
	}
	return maxGroupChain
}

// newGroupFrom stores st as a new group, as a delta on parent when that is
// short, and returns its ID. It does not change the current state.
func (b *batch) newGroupFrom(parent uint64, st eventgraph.StateMap) (uint64, error) {
	id := b.nextGroup
	b.nextGroup++
	var g storage.StateGroup
	if parent != 0 && b.groupChainOf(parent) < maxGroupChain {
		ps, err := b.groupState(parent)
		if err != nil {
			return 0, err
		}
		g = storage.StateGroup{Parent: parent, Chain: b.groupChainOf(parent) + 1, Entries: stateDiff(ps, st)}
	} else {
		g = storage.StateGroup{Entries: stateEntries(st)}
	}
	b.groups[id] = g
	b.r.groupCacheAdd(id, st)
	return id, nil
}

// newGroupDelta stores the state of parent changed by entries as a new
// group: a delta while the chain is short, else a full copy.
func (b *batch) newGroupDelta(parent uint64, entries []storage.RoomStateEntry) (uint64, error) {
	if parent != 0 {
		if chain := b.groupChainOf(parent); chain < maxGroupChain {
			id := b.nextGroup
			b.nextGroup++
			b.groups[id] = storage.StateGroup{Parent: parent, Chain: chain + 1, Entries: entries}
			return id, nil
		}
	}
	ps := eventgraph.StateMap{}
	if parent != 0 {
		var err error
		if ps, err = b.groupState(parent); err != nil {
			return 0, err
		}
	}
	st := make(eventgraph.StateMap, len(ps)+len(entries))
	for k, v := range ps {
		st[k] = v
	}
	for _, e := range entries {
		k := eventgraph.StateKey{Type: e.Type, StateKey: e.StateKey}
		if e.EventID == "" {
			delete(st, k)
		} else {
			st[k] = e.EventID
		}
	}
	return b.newGroupFrom(0, st)
}

// stateDiff lists the entries that turn from into to.
func stateDiff(from, to eventgraph.StateMap) []storage.RoomStateEntry {
	var out []storage.RoomStateEntry
	for k, id := range to {
		if from[k] != id {
			out = append(out, storage.RoomStateEntry{Type: k.Type, StateKey: k.StateKey, EventID: id})
		}
	}
	for k := range from {
		if _, ok := to[k]; !ok {
			out = append(out, storage.RoomStateEntry{Type: k.Type, StateKey: k.StateKey})
		}
	}
	return out
}

func stateEntries(st eventgraph.StateMap) []storage.RoomStateEntry {
	out := make([]storage.RoomStateEntry, 0, len(st))
	for k, id := range st {
		out = append(out, storage.RoomStateEntry{Type: k.Type, StateKey: k.StateKey, EventID: id})
	}
	return out
}

// ensureStateGroups gives a room stored before state groups existed one
// full group for its current state, so federation can build on it.
func (r *roomActor) ensureStateGroups() error {
	if !r.exists || r.meta.StateGroup != 0 || r.meta.Outsider {
		return nil
	}
	b := r.newBatch()
	b.addGroup(nil)
	meta := r.meta
	meta.StateGroup, meta.GroupChain, meta.NextGroup = b.group, b.groupChain, b.nextGroup
	identity := r.env.Identity
	err := r.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, identity)
		for id, g := range b.groups {
			if err := rt.PutStateGroup(id, g); err != nil {
				return err
			}
		}
		return rt.PutMeta(meta)
	})
	if err != nil {
		return fmt.Errorf("room %s: first state group: %w", r.roomID, err)
	}
	r.meta = meta
	return nil
}

// ---- server ACLs ----

// aclAllows reports whether the room's m.room.server_acl lets server take
// part. This server is always allowed.
func (r *roomActor) aclAllows(server string) bool {
	if server == "" || server == r.env.Server.ServerName {
		return true
	}
	acl := r.stateEvent("m.room.server_acl", "")
	if acl == nil {
		return true
	}
	return eventgraph.ServerACLAllows(acl.Content(), server)
}

func errACLDenied(server string) *MatrixError {
	return ErrForbidden("server %s is denied by the room's server ACL", server)
}

// fedCheckOrigin refuses a federation request of origin for this room when
// the room is unknown here or the ACL denies the server.
func (r *roomActor) fedCheckOrigin(origin string) error {
	if !r.exists {
		return ErrNotFound("room not known to this server")
	}
	if !r.aclAllows(origin) {
		return errACLDenied(origin)
	}
	return nil
}

// serverInRoom reports whether server has a joined member.
func (r *roomActor) serverInRoom(server string) bool {
	for user, m := range r.members {
		if m.Membership == eventgraph.MembershipJoin && serverOf(user) == server {
			return true
		}
	}
	return false
}

// incompatibleVersion is make_join's refusal when the asking server does not
// support the room's version.
func (r *roomActor) incompatibleVersion() *MatrixError {
	e := Errorf(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION", "the room's version %s is not supported by your server", r.rv.ID)
	e.Extra = map[string]any{"room_version": string(r.rv.ID)}
	return e
}

// templateJSON strips what the joining server adds from a built event.
func templateJSON(ev *eventgraph.Event) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(ev.CanonicalPDU(), &m); err != nil {
		return nil, err
	}
	delete(m, "signatures")
	delete(m, "hashes")
	delete(m, "unsigned")
	if _, ok := m["event_id"]; ok {
		delete(m, "event_id")
	}
	return json.Marshal(m)
}
