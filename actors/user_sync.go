package actors

import (
	"encoding/json"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// The user actor's half of /sync (the sync contract between room actors,
// user actors and the gateway).
//
// Rooms tell the user actor where they are with RoomNotice; the actor keeps
// the user's memberships (persisted: they change rarely) and, in memory,
// each room's latest position and ephemeral position. A sync token "u<N>"
// names a record N: the room positions a sync reached, the memberships it
// reported and the account data sequence it covered. SyncPlan compares the
// state now with the record of the since token and says which rooms to
// read; SyncDone stores the new record once the gateway has read them.
//
// Records are written as deltas over the record the sync started from, so
// that a sync writes what changed rather than every room of the user; every
// maxRecordDepth-th record is written in full so that chains stay short.
// The newest keptSyncRecords records (and the records they build on) are
// kept; an older or unknown token is answered as an initial sync.
const (
	maxParkedSyncs    = 64
	maxPendingPlans   = 128
	keptSyncRecords   = 64
	maxRecordDepth    = 16
	resolvedCacheSize = 4
	maxSyncWait       = 5 * time.Minute
)

// syncBase is a sync record resolved to its full content. It is never
// changed once built: plans, parked requests and the cache share it.
type syncBase struct {
	n           uint64
	depth       int
	positions   map[string]uint64
	ephemeral   map[string]uint64
	memberships map[string]string
	seq         uint64
}

// pendingPlan is what a minted token will stand for once its sync is done.
type pendingPlan struct {
	base *syncBase // nil: the plan was an initial sync
	// memberships are the memberships the plan reported or skipped that
	// differ from the base; planned tells which were given to the gateway
	// to read (recorded only if the gateway reached the room).
	memberships map[string]plannedMembership
	seq         uint64
}

type plannedMembership struct {
	membership string
	planned    bool
}

// parkedSync is a long-poll waiting for something to change.
type parkedSync struct {
	id     uint64
	sender *actor.PID
	req    *pb.SyncPlan
	base   *syncBase
	timer  *time.Timer
}

type userSync struct {
	// current and currentEph are the rooms' latest positions as told by
	// notices (or learnt from a sync done in this activation); a room
	// missing here may have moved.
	current    map[string]uint64
	currentEph map[string]uint64
	pending    map[uint64]*pendingPlan
	parked     []*parkedSync
	cache      []*syncBase // most recently used last
	// nextRecord is the last record number handed out.
	nextRecord  uint64
	nextRequest uint64
	// presenceWrittenTS is the activity time last written to storage.
	presenceWrittenTS int64
}

func newUserSync(env *Env) userSync {
	return userSync{
		current:    map[string]uint64{},
		currentEph: map[string]uint64{},
		pending:    map[uint64]*pendingPlan{},
		// Record numbers start above wall-clock milliseconds × 1024, so a
		// restarted actor does not hand out again a number that the previous
		// activation minted but never stored (its sync may still be done).
		nextRecord: uint64(max(env.NowMillis(), 0)) << 10,
	}
}

// restore sets the counters from the loaded state.
func (s *userSync) restore(st *storage.UserState) {
	for n := range st.Records {
		s.nextRecord = max(s.nextRecord, n)
	}
	if st.Presence != nil {
		s.presenceWrittenTS = st.Presence.LastActiveTS
	}
}

func (s *userSync) mint() uint64 {
	s.nextRecord++
	return s.nextRecord
}

func syncTokenString(n uint64) string { return "u" + strconv.FormatUint(n, 10) }

func parseSyncToken(tok string) (uint64, bool) {
	rest, ok := strings.CutPrefix(tok, "u")
	if !ok || rest == "" || len(rest) > 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 10, 64)
	return n, err == nil
}

func activeMembership(m string) bool { return m == "join" || m == "invite" || m == "knock" }

// roomNotice records where a room is and, when the user's own membership
// changed, the new membership; then wakes the long-polls it concerns.
func (u *user) roomNotice(ctx actor.Context, m *pb.RoomNotice) {
	if u.loadErr != nil || u.st.Account == nil || m.RoomId == "" {
		return
	}
	if m.Membership != "" {
		prev, had := u.st.Rooms[m.RoomId]
		if !had || (prev.Membership != m.Membership && m.Pos >= prev.Pos) {
			r := storage.UserRoom{Membership: m.Membership, Pos: m.Pos}
			if err := u.write(func(ut storage.UserTx) error { return ut.PutRoom(m.RoomId, r) }); err != nil {
				// The room will tell again with its next event; until then
				// the membership stays as it was.
				u.env.Log.Error("user: record membership", slog.String("room", m.RoomId), slog.Any("err", err))
				return
			}
			u.st.Rooms[m.RoomId] = r
		}
	}
	s := &u.sync
	if m.Pos > 0 && m.Pos > s.current[m.RoomId] {
		s.current[m.RoomId] = m.Pos
	}
	if m.EphemeralPos > 0 && m.EphemeralPos > s.currentEph[m.RoomId] {
		s.currentEph[m.RoomId] = m.EphemeralPos
	}
	kept := s.parked[:0]
	for _, p := range s.parked {
		if u.roomMoved(p.base, m.RoomId, p.req.FullState) {
			u.answer(ctx, p)
			continue
		}
		kept = append(kept, p)
	}
	clear(s.parked[len(kept):])
	s.parked = kept
}

// roomMoved reports whether a plan from base would include room.
func (u *user) roomMoved(base *syncBase, room string, fullState bool) bool {
	r, has := u.st.Rooms[room]
	if !has {
		return false
	}
	if r.Membership != base.memberships[room] {
		return true
	}
	if !activeMembership(r.Membership) {
		return false
	}
	s := &u.sync
	cur, known := s.current[room]
	if !known || cur > base.positions[room] {
		return true
	}
	if r.Membership == "join" {
		if fullState {
			return true
		}
		eph, known := s.currentEph[room]
		if !known || eph > base.ephemeral[room] {
			return true
		}
	}
	return false
}

// wakeAll answers every parked long-poll: called after the account data
// sequence moved, which every one of them has to report.
func (u *user) wakeAll(ctx actor.Context) {
	parked := u.sync.parked
	u.sync.parked = nil
	for _, p := range parked {
		u.answer(ctx, p)
	}
}

// answer replies to a parked long-poll with a fresh plan.
func (u *user) answer(ctx actor.Context, p *parkedSync) {
	p.timer.Stop()
	reply, err := u.plan(p.base, p.req.FullState)
	if err != nil {
		ctx.Send(p.sender, ToPB(err))
		return
	}
	ctx.Send(p.sender, reply)
}

// releaseParked answers every long-poll with an empty plan when the actor
// stops, so that no client waits for an actor that is gone.
func (u *user) releaseParked(ctx actor.Context) {
	parked := u.sync.parked
	u.sync.parked = nil
	for _, p := range parked {
		p.timer.Stop()
		ctx.Send(p.sender, u.emptyPlan(p.base))
	}
}

func (u *user) syncPlan(ctx actor.Context, m *pb.SyncPlan) {
	if _, err := u.account(false); err != nil {
		u.reply(ctx, acctFail(err))
		return
	}
	base, err := u.resolve(m.Since)
	if err != nil {
		u.reply(ctx, acctFail(err))
		return
	}
	if base != nil && m.TimeoutMs > 0 && ctx.Sender() != nil && u.planEmpty(base, m.FullState) && !u.toDeviceWaiting(m) {
		u.park(ctx, m, base)
		return
	}
	reply, err := u.plan(base, m.FullState)
	if err != nil {
		u.reply(ctx, acctFail(err))
		return
	}
	u.reply(ctx, acctOK(reply))
}

// planEmpty reports whether a plan from base would have nothing in it,
// without building it.
func (u *user) planEmpty(base *syncBase, fullState bool) bool {
	if u.st.Meta.Seq > base.seq {
		return false
	}
	for room := range u.st.Rooms {
		if u.roomMoved(base, room, fullState) {
			return false
		}
	}
	return true
}

func (u *user) park(ctx actor.Context, m *pb.SyncPlan, base *syncBase) {
	s := &u.sync
	if len(s.parked) >= maxParkedSyncs {
		oldest := s.parked[0]
		s.parked = slices.Delete(s.parked, 0, 1)
		oldest.timer.Stop()
		ctx.Send(oldest.sender, u.emptyPlan(oldest.base))
	}
	s.nextRequest++
	id := s.nextRequest
	wait := min(time.Duration(m.TimeoutMs)*time.Millisecond, maxSyncWait)
	router, userID := u.env.Router, u.userID
	p := &parkedSync{id: id, sender: ctx.Sender(), req: m, base: base,
		timer: time.AfterFunc(wait, func() { router.Send(&pb.SyncTimeout{UserId: userID, Request: id}) })}
	s.parked = append(s.parked, p)
}

func (u *user) syncTimeout(ctx actor.Context, m *pb.SyncTimeout) {
	s := &u.sync
	for i, p := range s.parked {
		if p.id == m.Request {
			s.parked = slices.Delete(s.parked, i, i+1)
			ctx.Send(p.sender, u.emptyPlan(p.base))
			return
		}
	}
}

// emptyPlan answers a long-poll that saw nothing: its token stands for the
// same record as the since token.
func (u *user) emptyPlan(base *syncBase) *pb.SyncPlanReply {
	n := u.remember(&pendingPlan{base: base, seq: base.seq})
	return &pb.SyncPlanReply{Next: syncTokenString(n)}
}

// remember keeps a minted token's plan until its sync is done.
func (u *user) remember(p *pendingPlan) uint64 {
	s := &u.sync
	n := s.mint()
	if len(s.pending) >= maxPendingPlans {
		oldest := n
		for k := range s.pending {
			oldest = min(oldest, k)
		}
		delete(s.pending, oldest)
	}
	s.pending[n] = p
	return n
}

// plan builds the answer to a SyncPlan from base (nil: initial sync).
func (u *user) plan(base *syncBase, fullState bool) (*pb.SyncPlanReply, error) {
	pend := &pendingPlan{base: base, memberships: map[string]plannedMembership{}, seq: u.st.Meta.Seq}
	reply := &pb.SyncPlanReply{Initial: base == nil}
	for room, r := range u.st.Rooms {
		active := activeMembership(r.Membership)
		if base == nil {
			pend.memberships[room] = plannedMembership{membership: r.Membership, planned: active}
			if active {
				reply.Rooms = append(reply.Rooms, &pb.PlannedRoom{RoomId: room, Membership: r.Membership,
					MembershipPos: r.Pos, Newly: true})
			}
			continue
		}
		recM := base.memberships[room]
		if r.Membership != recM {
			pr := &pb.PlannedRoom{RoomId: room, Membership: r.Membership, MembershipPos: r.Pos, Newly: true}
			if !active {
				// Left or banned: the timeline up to the membership event,
				// from where the last sync stopped.
				pr.From, pr.EphemeralFrom = base.positions[room], base.ephemeral[room]
			}
			reply.Rooms = append(reply.Rooms, pr)
			pend.memberships[room] = plannedMembership{membership: r.Membership, planned: true}
			continue
		}
		if active && u.roomMoved(base, room, fullState) {
			reply.Rooms = append(reply.Rooms, &pb.PlannedRoom{RoomId: room, Membership: r.Membership,
				From: base.positions[room], MembershipPos: r.Pos, EphemeralFrom: base.ephemeral[room]})
		}
	}
	slices.SortFunc(reply.Rooms, func(a, b *pb.PlannedRoom) int { return strings.Compare(a.RoomId, b.RoomId) })

	var since uint64
	if base != nil {
		since = base.seq
	}
	if u.st.Meta.Seq > since || base == nil {
		if err := u.accountDataSince(since, base == nil, reply); err != nil {
			return nil, err
		}
		ev, err := u.presenceEvents(since, base == nil)
		if err != nil {
			return nil, err
		}
		reply.Presence = ev
		if base != nil {
			if err := u.deviceListsInPlan(since, reply); err != nil {
				return nil, err
			}
		}
	}
	reply.Next = syncTokenString(u.remember(pend))
	return reply, nil
}

// accountDataSince fills the plan's account data changed after since
// (initial: every entry, and always the push rules).
func (u *user) accountDataSince(since uint64, initial bool, reply *pb.SyncPlanReply) error {
	var changes []storage.AccountDataChange
	if err := u.view(func(ut storage.UserTx) error {
		var err error
		changes, err = ut.AccountDataSince(since, 0)
		return err
	}); err != nil {
		return err
	}
	changes, err := u.pushRulesInSync(changes, initial)
	if err != nil {
		return err
	}
	type event struct {
		Type    string          `json:"type"`
		Content json.RawMessage `json:"content"`
	}
	var global []event
	rooms := map[string][]event{}
	for _, c := range changes {
		if c.Room == "" {
			global = append(global, event{Type: c.Type, Content: c.Content})
		} else {
			rooms[c.Room] = append(rooms[c.Room], event{Type: c.Type, Content: c.Content})
		}
	}
	if len(global) > 0 {
		b, err := json.Marshal(global)
		if err != nil {
			return err
		}
		reply.AccountData = b
	}
	if len(rooms) > 0 {
		b, err := json.Marshal(rooms)
		if err != nil {
			return err
		}
		reply.RoomAccountData = b
	}
	return nil
}

// resolve finds the record a since token stands for; nil (no error) means
// the token is empty, unknown or expired: answer an initial sync.
func (u *user) resolve(since string) (*syncBase, error) {
	n, ok := parseSyncToken(since)
	if !ok {
		return nil, nil
	}
	if b := u.cached(n); b != nil {
		return b, nil
	}
	if _, ok := u.st.Records[n]; !ok {
		return nil, nil
	}
	// Walk back to a full record or a cached ancestor.
	var chain []uint64
	var root *syncBase
	for cur := n; ; {
		if b := u.cached(cur); b != nil {
			root = b
			break
		}
		meta, ok := u.st.Records[cur]
		if !ok || len(chain) > maxRecordDepth+1 {
			return nil, nil
		}
		chain = append(chain, cur)
		if meta.Base == 0 {
			break
		}
		cur = meta.Base
	}
	recs := make([]*storage.SyncRecord, len(chain))
	if err := u.view(func(ut storage.UserTx) error {
		for i, c := range chain {
			r, err := ut.SyncRecord(c)
			if err != nil {
				return err
			}
			recs[i] = r
		}
		return nil
	}); err != nil {
		return nil, err
	}
	b := root
	for i := len(chain) - 1; i >= 0; i-- {
		if recs[i] == nil {
			return nil, nil
		}
		b = overlaySyncRecord(b, chain[i], recs[i])
	}
	u.cachePut(b)
	return b, nil
}

// overlay builds the full record n from its base and its delta.
func overlaySyncRecord(base *syncBase, n uint64, r *storage.SyncRecord) *syncBase {
	b := &syncBase{n: n, depth: r.Depth, seq: r.Seq,
		positions: map[string]uint64{}, ephemeral: map[string]uint64{}, memberships: map[string]string{}}
	if base != nil && r.Base != 0 {
		maps.Copy(b.positions, base.positions)
		maps.Copy(b.ephemeral, base.ephemeral)
		maps.Copy(b.memberships, base.memberships)
	}
	maps.Copy(b.positions, r.Positions)
	maps.Copy(b.ephemeral, r.Ephemeral)
	maps.Copy(b.memberships, r.Memberships)
	return b
}

func (u *user) cached(n uint64) *syncBase {
	c := u.sync.cache
	for i, b := range c {
		if b.n == n {
			copy(c[i:], c[i+1:])
			c[len(c)-1] = b
			return b
		}
	}
	return nil
}

func (u *user) cachePut(b *syncBase) {
	s := &u.sync
	if len(s.cache) >= resolvedCacheSize {
		s.cache = slices.Delete(s.cache, 0, 1)
	}
	s.cache = append(s.cache, b)
}

// syncDone stores the record of a finished sync: the plan's base with the
// positions the gateway reached, the memberships and account data
// sequence the plan reported.
func (u *user) syncDone(m *pb.SyncDone) acctResult {
	if _, err := u.account(false); err != nil {
		return acctFail(err)
	}
	n, okTok := parseSyncToken(m.Token)
	if !okTok {
		return acctFail(ErrInvalidParam("malformed sync token"))
	}
	s := &u.sync
	pend := s.pending[n]
	if pend == nil {
		// Done already, or minted by an earlier activation: the token is
		// handed out as is; if it was never stored the next sync from it is
		// answered as an initial sync.
		return acctOK(&pb.SyncDoneReply{NextBatch: m.Token})
	}
	base := pend.base
	// A delta may only build on a stored record; a base known only from
	// memory (pruned since it was resolved) makes this record a full one.
	baseStored := false
	if base != nil {
		_, baseStored = u.st.Records[base.n]
	}
	delta := &storage.SyncRecord{Positions: map[string]uint64{}, Ephemeral: map[string]uint64{},
		Memberships: map[string]string{}, Seq: pend.seq}
	if base != nil {
		delta.Base, delta.Depth = base.n, base.depth+1
	}
	for room, p := range m.Positions {
		if base == nil || base.positions[room] != p {
			delta.Positions[room] = p
		}
	}
	for room, e := range m.Ephemeral {
		if base == nil || base.ephemeral[room] != e {
			delta.Ephemeral[room] = e
		}
	}
	for room, pm := range pend.memberships {
		if _, reached := m.Positions[room]; pm.planned && !reached {
			continue
		}
		if base == nil || base.memberships[room] != pm.membership {
			delta.Memberships[room] = pm.membership
		}
	}
	full := overlaySyncRecord(base, n, delta)
	rec := delta
	if base == nil || !baseStored || delta.Depth > maxRecordDepth {
		rec = &storage.SyncRecord{Positions: full.positions, Ephemeral: full.ephemeral,
			Memberships: full.memberships, Seq: full.seq}
		full.depth = 0
	}
	meta := storage.SyncRecordMeta{Base: rec.Base, Depth: rec.Depth}
	prune := u.pruneRecords(n, meta)
	if err := u.write(func(ut storage.UserTx) error { return ut.PutSyncRecord(n, rec, prune) }); err != nil {
		return acctFail(err)
	}
	u.st.Records[n] = meta
	for _, p := range prune {
		delete(u.st.Records, p)
	}
	delete(s.pending, n)
	u.cachePut(full)
	// What the gateway read is where those rooms were when this activation
	// already received their notices, so it is a lower bound of where they
	// are now.
	for room, p := range m.Positions {
		if r, has := u.st.Rooms[room]; has && activeMembership(r.Membership) {
			if cur, known := s.current[room]; !known || p > cur {
				s.current[room] = p
			}
		}
	}
	for room, e := range m.Ephemeral {
		if r, has := u.st.Rooms[room]; has && r.Membership == "join" {
			if cur, known := s.currentEph[room]; !known || e > cur {
				s.currentEph[room] = e
			}
		}
	}
	return acctOK(&pb.SyncDoneReply{NextBatch: m.Token})
}

// pruneRecords lists the stored records to delete when record n is added:
// all but the newest keptSyncRecords and the records those, pending plans
// and parked long-polls build on.
func (u *user) pruneRecords(n uint64, meta storage.SyncRecordMeta) []uint64 {
	recs := u.st.Records
	if len(recs)+1 <= keptSyncRecords {
		return nil
	}
	all := make([]uint64, 0, len(recs)+1)
	for k := range recs {
		all = append(all, k)
	}
	all = append(all, n)
	slices.Sort(all)
	keep := map[uint64]bool{}
	var mark func(k uint64)
	mark = func(k uint64) {
		for depth := 0; k != 0 && !keep[k] && depth <= maxRecordDepth+1; depth++ {
			keep[k] = true
			if k == n {
				k = meta.Base
				continue
			}
			m, ok := recs[k]
			if !ok {
				return
			}
			k = m.Base
		}
	}
	for _, k := range all[max(0, len(all)-keptSyncRecords):] {
		mark(k)
	}
	for _, p := range u.sync.pending {
		if p.base != nil {
			mark(p.base.n)
		}
	}
	for _, p := range u.sync.parked {
		mark(p.base.n)
	}
	var out []uint64
	for _, k := range all {
		if !keep[k] {
			out = append(out, k)
		}
	}
	return out
}
