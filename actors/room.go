package actors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/blevesearch/bleve/v2"
	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// roomActor is the single writer of one room (identity room/<room_id>): it
// builds, authorises and persists the room's events, answers reads of its
// timeline and state, keeps the room's typing notifications and receipts,
// and tells its local members' user actors when it moves.
//
// In memory it holds what every new event needs: the current state and its
// events, the forward extremities, the members index and the ephemeral data.
// Timeline reads go to the partition's bbolt file.
type roomActor struct {
	env    *Env
	roomID string

	// evaluators caches members' compiled push rules for unread counts.
	evaluators evaluatorCache

	loadErr error
	exists  bool
	rv      *eventgraph.RoomVersion
	meta    storage.RoomMeta
	create  *eventgraph.Event

	state eventgraph.StateMap
	// stateEvents are the events of the current state, by ID.
	stateEvents map[string]*eventgraph.Event
	// extremities are the forward extremities' events, by ID.
	extremities map[string]*eventgraph.Event
	members     map[string]memberInfo

	typing    map[string]time.Time // user → typing until
	typingPos uint64               // ephemeral position of the last typing change
	receipts  map[storage.RoomReceiptKey]storage.RoomReceipt
	ephPos    uint64
	sweep     *time.Timer
	sweepAt   time.Time

	// searchIdx is the room's full-text index, open after the first search
	// (room_search.go).
	searchIdx bleve.Index

	// groupCache holds recently rebuilt state groups (room_fed.go).
	groupCache map[uint64]eventgraph.StateMap
	// outsiders are local users' memberships in a room this server is not
	// in: invites and knocks received over federation (room_fed_member.go).
	outsiders map[string]outsiderMembership
}

// memberInfo is one user's current membership.
type memberInfo struct {
	Membership string
	Pos        uint64 // stream position of the membership event
	EventID    string
}

// NewRoom makes the actor of one room; its identity is room/<room_id>.
func NewRoom(env *Env) actor.Actor {
	return &roomActor{env: env, roomID: strings.TrimPrefix(env.Identity, pb.KindRoom+"/")}
}

func (r *roomActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if r.env.IdleTimeout > 0 {
			ctx.SetReceiveTimeout(r.env.IdleTimeout)
		}
		err := r.load()
		if err == nil {
			err = r.ensureStateGroups()
		}
		if err != nil {
			r.loadErr = err
			r.env.Log.Error("room: load failed", slog.Any("err", err))
		}
	case *actor.ReceiveTimeout:
		ctx.Send(ctx.Parent(), &pb.Passivate{Identity: r.env.Identity})
	case *actor.Stopping:
		if r.sweep != nil {
			r.sweep.Stop()
		}
		r.closeSearch()
	case proto.Message:
		if r.loadErr != nil {
			r.respond(ctx, nil, ErrUnknown("room unavailable"))
			return
		}
		r.handle(ctx, m)
		if !r.exists {
			// A room that does not exist (a client guessing IDs) keeps no
			// activation around: the next message starts afresh.
			ctx.Send(ctx.Parent(), &pb.Passivate{Identity: r.env.Identity})
		}
	}
}

func (r *roomActor) handle(ctx actor.Context, msg proto.Message) {
	switch m := msg.(type) {
	case *pb.CreateRoom:
		res, err := r.createRoom(m)
		r.respond(ctx, res, err)
	case *pb.SendEvent:
		res, err := r.sendEvent(m)
		r.respond(ctx, res, err)
	case *pb.Membership:
		res, err := r.membership(m)
		r.respond(ctx, res, err)
	case *pb.RoomQuery:
		res, err := r.query(m)
		r.respond(ctx, res, err)
	case *pb.SyncRoom:
		res, err := r.syncRoom(m)
		r.respond(ctx, res, err)
	case *pb.Typing:
		res, err := r.setTyping(m)
		r.respond(ctx, res, err)
	case *pb.Receipt:
		res, err := r.setReceipt(m)
		r.respond(ctx, res, err)
	case *pb.RoomPublish:
		res, err := r.publish(m)
		r.respond(ctx, res, err)
	case *pb.RoomAliasUpdate:
		res, err := r.updateAlias(m)
		r.respond(ctx, res, err)
	case *pb.RoomRelations:
		res, err := r.relationsPage(m)
		r.respond(ctx, res, err)
	case *pb.RoomThreads:
		res, err := r.threadsPage(m)
		r.respond(ctx, res, err)
	case *pb.RoomTimestamp:
		res, err := r.timestampToEvent(m)
		r.respond(ctx, res, err)
	case *pb.RoomSpaceSummary:
		res, err := r.spaceSummary(m)
		r.respond(ctx, res, err)
	case *pb.RoomUpgradeState:
		res, err := r.upgradeState(m)
		r.respond(ctx, res, err)
	case *pb.RoomSearch:
		res, err := r.searchRoom(m)
		r.respond(ctx, res, err)
	case *pb.RoomFedInfo:
		res, err := r.fedInfo(m)
		r.respond(ctx, res, err)
	case *pb.RoomFedIngest:
		res, err := r.fedIngest(m)
		r.respond(ctx, res, err)
	case *pb.RoomFedRead:
		res, err := r.fedRead(m)
		r.respond(ctx, res, err)
	case *pb.RoomMakeMembership:
		res, err := r.makeMembership(m)
		r.respond(ctx, res, err)
	case *pb.RoomSendMembership:
		res, err := r.sendMembership(m)
		r.respond(ctx, res, err)
	case *pb.RoomFedJoin:
		res, err := r.fedJoin(m)
		r.respond(ctx, res, err)
	case *pb.RoomPrepareMembership:
		res, err := r.prepareMembership(m)
		r.respond(ctx, res, err)
	case *pb.RoomFedOutsider:
		res, err := r.fedOutsider(m)
		r.respond(ctx, res, err)
	default:
		r.respond(ctx, nil, Errorf(http.StatusBadRequest, "M_UNRECOGNIZED", "room cannot handle %T", msg))
	}
}

// respond answers a request (fire-and-forget senders get nothing). Internal
// errors are logged here: the caller only sees M_UNKNOWN.
func (r *roomActor) respond(ctx actor.Context, res proto.Message, err error) {
	if err != nil {
		var me *MatrixError
		if !errors.As(err, &me) {
			r.env.Log.Error("room: request failed", slog.Any("err", err))
		}
		if ctx.Sender() != nil {
			if me != nil {
				ctx.Respond(ToPB(me))
			} else {
				ctx.Respond(ToPB(err))
			}
		}
		return
	}
	if ctx.Sender() != nil && res != nil {
		ctx.Respond(res)
	}
}

// load reads the room from storage. A room never created leaves exists
// false and writes nothing.
func (r *roomActor) load() error {
	r.state = eventgraph.StateMap{}
	r.stateEvents = map[string]*eventgraph.Event{}
	r.extremities = map[string]*eventgraph.Event{}
	r.members = map[string]memberInfo{}
	r.typing = map[string]time.Time{}
	r.receipts = map[storage.RoomReceiptKey]storage.RoomReceipt{}
	return r.env.Partition.View(func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, r.env.Identity)
		meta, ok, err := rt.Meta()
		if err != nil || !ok {
			return err
		}
		rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(meta.Version))
		if !ok {
			return fmt.Errorf("room %s: stored room version %q unknown", r.roomID, meta.Version)
		}
		r.rv, r.meta = rv, meta
		if meta.Outsider {
			return r.loadOutsiders(rt)
		}
		entries, err := rt.State()
		if err != nil {
			return err
		}
		for _, e := range entries {
			ev, rec, err := r.readEvent(rt, e.EventID)
			if err != nil {
				return err
			}
			if ev == nil {
				return fmt.Errorf("room %s: state event %s missing", r.roomID, e.EventID)
			}
			k := eventgraph.StateKey{Type: e.Type, StateKey: e.StateKey}
			r.state[k] = e.EventID
			r.stateEvents[e.EventID] = ev
			if e.Type == eventgraph.TypeMember {
				mem, _ := ev.Membership()
				r.members[e.StateKey] = memberInfo{Membership: mem, Pos: rec.Pos, EventID: e.EventID}
			}
		}
		r.create = r.stateEvents[r.state[eventgraph.StateKey{Type: eventgraph.TypeCreate}]]
		if r.create == nil {
			return fmt.Errorf("room %s: no create event in state", r.roomID)
		}
		for _, id := range meta.Extremities {
			ev, _, err := r.readEvent(rt, id)
			if err != nil {
				return err
			}
			if ev == nil {
				return fmt.Errorf("room %s: forward extremity %s missing", r.roomID, id)
			}
			r.extremities[id] = ev
		}
		err = rt.Receipts(func(k storage.RoomReceiptKey, rc storage.RoomReceipt) error {
			r.receipts[k] = rc
			r.ephPos = max(r.ephPos, rc.EphemeralPos)
			return nil
		})
		if err != nil {
			return err
		}
		// Typing changes before a restart moved the ephemeral position to
		// about the time they happened; starting from now keeps it from
		// going back.
		r.ephPos = max(r.ephPos, uint64(max(r.env.NowMillis(), 0)))
		r.exists = true
		return nil
	})
}

// readEvent loads and parses one stored event (nil if absent).
func (r *roomActor) readEvent(rt storage.RoomTx, id string) (*eventgraph.Event, *storage.RoomEvent, error) {
	rec, err := rt.Event(id)
	if err != nil || rec == nil {
		return nil, nil, err
	}
	ev, err := eventgraph.NewEventFromTrustedJSON(rec.PDU, r.rv, id)
	if err != nil {
		return nil, nil, fmt.Errorf("room %s: %w", r.roomID, err)
	}
	return ev, rec, nil
}

// lookup finds an event the room holds in memory.
func (r *roomActor) lookup(id string) (*eventgraph.Event, error) {
	if ev, ok := r.stateEvents[id]; ok {
		return ev, nil
	}
	if ev, ok := r.extremities[id]; ok {
		return ev, nil
	}
	return nil, nil
}

func (r *roomActor) stateEvent(typ, stateKey string) *eventgraph.Event {
	id, ok := r.state[eventgraph.StateKey{Type: typ, StateKey: stateKey}]
	if !ok {
		return nil
	}
	return r.stateEvents[id]
}

func (r *roomActor) membershipOf(userID string) string {
	return r.members[userID].Membership
}

func (r *roomActor) powerLevels() (*eventgraph.PowerLevels, error) {
	pl, err := eventgraph.NewPowerLevels(r.rv, r.create, r.stateEvent(eventgraph.TypePowerLevels, ""))
	if err != nil {
		return nil, fmt.Errorf("room %s: power levels: %w", r.roomID, err)
	}
	return pl, nil
}

// mustExist refuses requests to a room that has not been created.
func (r *roomActor) mustExist() error {
	if !r.exists {
		return ErrNotFound("room not found")
	}
	return nil
}

// isLocal reports whether userID belongs to this server.
func (r *roomActor) isLocal(userID string) bool {
	return serverOf(userID) == r.env.Server.ServerName
}

// nextEphemeral advances the ephemeral position: max(previous+1, now in
// ms), so it keeps growing across restarts without persisting typing.
func (r *roomActor) nextEphemeral() uint64 {
	now := uint64(max(r.env.NowMillis(), 0))
	r.ephPos = max(r.ephPos+1, now)
	return r.ephPos
}

// ---- building and committing events ----

// batch is a group of new events committed in one transaction: one request
// (a message, the whole initial state of a new room, or the PDUs of one
// federation transaction). Each event is authorised against the state the
// previous ones left.
type batch struct {
	r *roomActor
	// overlay is the current state changed by the batch ("" removes a key),
	// overlayPos the position of the event that changed each key.
	overlay    eventgraph.StateMap
	overlayPos map[eventgraph.StateKey]uint64
	added      map[string]*eventgraph.Event
	extrem     []string
	depth      int64
	pos        uint64
	now        int64
	events     []*pendingEvent
	// redacted maps redacted event IDs to their new stored form.
	redacted map[string]*storage.RoomEvent
	// redactedEvents are redacted copies of current state events.
	redactedEvents map[string]*eventgraph.Event
	published      *bool

	// State groups (storage/roomstate.go): group is the current state's,
	// groups the new ones.
	group      uint64
	groupChain int
	nextGroup  uint64
	groups     map[uint64]storage.StateGroup
	// stored are events written without a timeline place: outliers,
	// rejected and soft-failed events (federation).
	stored      map[string]*storage.RoomEvent
	storedOrder []string
	// rt, when set, lets lookups read the partition (federation ingest
	// reads events outside the current state).
	rt     *storage.RoomTx
	loaded map[string]*eventgraph.Event
	// cur is the materialised current state (see current).
	cur eventgraph.StateMap
	// backfilled are history events placed by this batch, oldest first;
	// commit gives them positions below the timeline.
	backfilled []string
	// pendingRedactions are redactions whose targets are not here yet
	// (target → redaction); donePending the targets that arrived.
	pendingRedactions map[string]string
	donePending       []string
	// bootstrap: the batch starts the room here from a send_join answer.
	bootstrap bool
	// forwardFrom is the server whose membership event (send_join,
	// send_leave, send_knock) the batch holds: the room sends it to the
	// other servers in the room.
	forwardFrom string
	// noFederate: the events reached the other servers another way (a join
	// through send_join), so the room does not queue them.
	noFederate bool
}

type pendingEvent struct {
	ev     *eventgraph.Event
	rec    storage.RoomEvent
	deltas []storage.RoomStateDelta
	txn    [3]string // user, device, txn ID; empty txn ID for none
}

func (r *roomActor) newBatch() *batch {
	ext := make([]string, 0, len(r.meta.Extremities))
	ext = append(ext, r.meta.Extremities...)
	return &batch{r: r, overlay: eventgraph.StateMap{}, overlayPos: map[eventgraph.StateKey]uint64{},
		added: map[string]*eventgraph.Event{}, extrem: ext, depth: r.meta.Depth, pos: r.meta.Pos, now: r.env.NowMillis(),
		redacted: map[string]*storage.RoomEvent{}, redactedEvents: map[string]*eventgraph.Event{},
		group: r.meta.StateGroup, groupChain: r.meta.GroupChain, nextGroup: max(r.meta.NextGroup, 1),
		groups: map[uint64]storage.StateGroup{}, stored: map[string]*storage.RoomEvent{}, loaded: map[string]*eventgraph.Event{},
		pendingRedactions: map[string]string{}}
}

func (b *batch) stateID(k eventgraph.StateKey) (string, bool) {
	if id, ok := b.overlay[k]; ok {
		return id, id != ""
	}
	id, ok := b.r.state[k]
	return id, ok
}

func (b *batch) lookup(id string) (*eventgraph.Event, error) {
	if ev, ok := b.redactedEvents[id]; ok {
		return ev, nil
	}
	if ev, ok := b.added[id]; ok {
		return ev, nil
	}
	if ev, err := b.r.lookup(id); ev != nil || err != nil {
		return ev, err
	}
	if ev, ok := b.loaded[id]; ok {
		return ev, nil
	}
	if b.rt == nil {
		return nil, nil
	}
	ev, _, err := b.r.readEvent(*b.rt, id)
	if err == nil && ev != nil {
		b.loaded[id] = ev
	}
	return ev, err
}

// AuthEvent implements eventgraph.AuthEvents over the batch's state.
func (b *batch) AuthEvent(k eventgraph.StateKey) (*eventgraph.Event, error) {
	id, ok := b.stateID(k)
	if !ok {
		return nil, nil
	}
	ev, err := b.lookup(id)
	if err == nil && ev == nil {
		err = fmt.Errorf("room %s: state event %s not loaded", b.r.roomID, id)
	}
	return ev, err
}

// add builds d on top of the batch, checks it against the auth rules and
// appends it. An auth failure is a 403 naming the rule's reason.
func (b *batch) add(d eventDraft, device, txn string) (*eventgraph.Event, error) {
	if err := checkDraft(d); err != nil {
		return nil, err
	}
	rv := b.r.rv
	var authIDs []string
	for _, k := range eventgraph.AuthEventsNeeded(d.Type, d.StateKey, d.Sender, d.Content, rv) {
		if id, ok := b.stateID(k); ok {
			authIDs = append(authIDs, id)
		}
	}
	prev := b.extrem
	if len(prev) > maxPrevEvents {
		prev = prev[len(prev)-maxPrevEvents:]
	}
	maxDepth := int64(0)
	for _, id := range prev {
		if ev, _ := b.lookup(id); ev != nil {
			maxDepth = max(maxDepth, ev.Depth())
		}
	}
	depth := max(maxDepth, b.depth) + 1
	roomID := b.r.roomID
	if rv.RoomIDFromCreateEvent && d.Type == eventgraph.TypeCreate {
		roomID = ""
	}
	ev, err := buildEvent(b.r.env.Server, rv, eventgraph.ProtoEvent{RoomID: roomID, Sender: d.Sender, Type: d.Type,
		StateKey: d.StateKey, Content: d.Content, Redacts: d.Redacts, PrevEvents: append([]string{}, prev...),
		AuthEvents: authIDs, Depth: depth, OriginServerTS: b.now}, b.lookup)
	if err != nil {
		return nil, err
	}
	if err := b.authorise(ev); err != nil {
		return nil, err
	}
	b.append(ev, device, txn)
	return ev, nil
}

// authorise applies the room version's auth rules against the batch state.
func (b *batch) authorise(ev *eventgraph.Event) error {
	var authEvents eventgraph.AuthEvents = b
	if ev.Type() == eventgraph.TypeCreate && ev.IsState() {
		authEvents = eventgraph.AuthEventMap{}
	}
	if err := eventgraph.Allowed(ev, authEvents); err != nil {
		var ae *eventgraph.AuthError
		if errors.As(err, &ae) {
			return ErrForbidden("%s", ae.Reason)
		}
		return fmt.Errorf("room %s: auth check: %w", b.r.roomID, err)
	}
	return nil
}

// append places an authorised event at the next stream position.
func (b *batch) append(ev *eventgraph.Event, device, txn string) {
	b.pos++
	pe := &pendingEvent{ev: ev, rec: storage.RoomEvent{PDU: ev.CanonicalPDU(), Pos: b.pos}}
	if txn != "" {
		pe.rec.Device, pe.rec.TxnID = device, txn
		pe.txn = [3]string{ev.Sender(), device, txn}
	}
	if ev.IsState() {
		k := ev.StateTuple()
		prev, _ := b.stateID(k)
		pe.rec.ReplacesState = prev
		pe.deltas = []storage.RoomStateDelta{{Type: k.Type, StateKey: k.StateKey, Prev: prev, New: ev.EventID()}}
		b.setState(k, ev.EventID(), b.pos)
		b.addGroup([]storage.RoomStateEntry{{Type: k.Type, StateKey: k.StateKey, EventID: ev.EventID()}})
	}
	pe.rec.StateGroup = b.group
	b.added[ev.EventID()] = ev
	b.extrem = []string{ev.EventID()}
	b.depth = ev.Depth()
	b.events = append(b.events, pe)
}

// maxGroupChain bounds the deltas read to rebuild a state group.
const maxGroupChain = 64

// addGroup makes the current state a new group: entries changed on the
// current group, or — when the chain is long or there is no group — a full
// copy of the current state.
func (b *batch) addGroup(entries []storage.RoomStateEntry) {
	id := b.nextGroup
	b.nextGroup++
	g := storage.StateGroup{Parent: b.group, Chain: b.groupChain + 1, Entries: entries}
	if b.group == 0 || g.Chain > maxGroupChain {
		g = storage.StateGroup{Entries: b.currentEntries()}
	}
	b.groups[id] = g
	b.group, b.groupChain = id, g.Chain
}

// currentEntries lists the current state with the batch's changes.
func (b *batch) currentEntries() []storage.RoomStateEntry {
	out := make([]storage.RoomStateEntry, 0, len(b.r.state)+len(b.overlay))
	for k, id := range b.r.state {
		if _, ok := b.overlay[k]; !ok {
			out = append(out, storage.RoomStateEntry{Type: k.Type, StateKey: k.StateKey, EventID: id})
		}
	}
	for k, id := range b.overlay {
		if id != "" {
			out = append(out, storage.RoomStateEntry{Type: k.Type, StateKey: k.StateKey, EventID: id})
		}
	}
	return out
}

// current is the current state with the batch's changes. The map is
// shared and changes as the batch does: callers read it and let it go.
func (b *batch) current() eventgraph.StateMap {
	if b.cur != nil {
		return b.cur
	}
	if len(b.overlay) == 0 {
		return b.r.state
	}
	st := make(eventgraph.StateMap, len(b.r.state)+len(b.overlay))
	for k, id := range b.r.state {
		st[k] = id
	}
	for k, id := range b.overlay {
		if id == "" {
			delete(st, k)
		} else {
			st[k] = id
		}
	}
	b.cur = st
	return st
}

// setState changes the batch's current state of k ("" removes it), made by
// the event at position pos.
func (b *batch) setState(k eventgraph.StateKey, id string, pos uint64) {
	b.overlay[k] = id
	b.overlayPos[k] = pos
	if b.cur != nil {
		if id == "" {
			delete(b.cur, k)
		} else {
			b.cur[k] = id
		}
	}
}

// store records an event kept without a timeline place.
func (b *batch) store(id string, rec *storage.RoomEvent, ev *eventgraph.Event) {
	if _, ok := b.stored[id]; !ok {
		b.storedOrder = append(b.storedOrder, id)
	}
	b.stored[id] = rec
	if ev != nil {
		b.loaded[id] = ev
	}
}

// redact records that target (a stored event) is redacted by redactionID.
func (b *batch) redact(targetID string, rec *storage.RoomEvent, redactionID string) error {
	if rec.RedactedBy != "" {
		return nil
	}
	red, err := eventgraph.Redact(rec.PDU, b.r.rv)
	if err != nil {
		return fmt.Errorf("room %s: redact %s: %w", b.r.roomID, targetID, err)
	}
	nr := *rec
	nr.PDU, nr.RedactedBy = red, redactionID
	b.redacted[targetID] = &nr
	if _, ok := b.r.stateEvents[targetID]; ok {
		ev, err := eventgraph.NewEventFromTrustedJSON(red, b.r.rv, targetID)
		if err != nil {
			return fmt.Errorf("room %s: parse redacted %s: %w", b.r.roomID, targetID, err)
		}
		b.redactedEvents[targetID] = ev
	}
	return nil
}

// commit persists the batch in one transaction and only then applies it to
// memory and tells the members. Nothing changes if it fails.
func (b *batch) commit() error {
	r := b.r
	meta := r.meta
	if len(b.events) > 0 {
		meta.Pos, meta.Depth, meta.Extremities = b.pos, b.depth, b.extrem
		meta.Version = string(r.rv.ID)
		if meta.CreateID == "" {
			meta.CreateID = b.events[0].ev.EventID()
		}
	}
	if len(b.groups) > 0 {
		meta.StateGroup, meta.GroupChain, meta.NextGroup = b.group, b.groupChain, b.nextGroup
	}
	// History comes newest first below the timeline: the newest backfilled
	// event takes the highest free position.
	for i := len(b.backfilled) - 1; i >= 0 && meta.BackfillNext > 0; i-- {
		if rec := b.stored[b.backfilled[i]]; rec != nil {
			rec.Pos = meta.BackfillNext
			meta.BackfillNext--
		}
	}
	if meta.Version == "" && r.rv != nil && len(b.stored) > 0 {
		meta.Version = string(r.rv.ID)
	}
	// Servers that were in the room before the batch still hear of it (a
	// kick or a leave reaches the server whose user left).
	before := r.remoteServers()
	if b.published != nil {
		meta.Published = *b.published
	}
	identity := r.env.Identity
	err := r.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, identity)
		for _, pe := range b.events {
			id := pe.ev.EventID()
			if err := rt.PutEvent(id, &pe.rec); err != nil {
				return err
			}
			if err := rt.PutTimeline(pe.rec.Pos, id); err != nil {
				return err
			}
			if err := rt.PutDeltas(pe.rec.Pos, pe.deltas); err != nil {
				return err
			}
			if pe.txn[2] != "" {
				if err := rt.PutTxn(pe.txn[0], pe.txn[1], pe.txn[2], id); err != nil {
					return err
				}
			}
		}
		if err := b.indexRelations(rt); err != nil {
			return err
		}
		for id, rec := range b.redacted {
			if err := rt.PutEvent(id, rec); err != nil {
				return err
			}
		}
		for k, id := range b.overlay {
			var err error
			if id == "" {
				err = rt.DeleteState(k.Type, k.StateKey)
			} else {
				err = rt.PutState(k.Type, k.StateKey, id)
			}
			if err != nil {
				return err
			}
		}
		for id, rec := range b.stored {
			if err := rt.PutEvent(id, rec); err != nil {
				return err
			}
			if rec.Pos != 0 {
				if err := rt.PutTimeline(rec.Pos, id); err != nil {
					return err
				}
			}
		}
		for id, g := range b.groups {
			if err := rt.PutStateGroup(id, g); err != nil {
				return err
			}
		}
		for target, redaction := range b.pendingRedactions {
			if err := rt.PutPendingRedaction(target, redaction); err != nil {
				return err
			}
		}
		for _, target := range b.donePending {
			if err := rt.DeletePendingRedaction(target); err != nil {
				return err
			}
		}
		return rt.PutMeta(meta)
	})
	if err != nil {
		return fmt.Errorf("room %s: commit: %w", r.roomID, err)
	}
	r.apply(b, meta)
	r.notify(b)
	r.federate(b, before)
	return nil
}

// apply updates memory after a successful commit.
func (r *roomActor) apply(b *batch, meta storage.RoomMeta) {
	r.meta = meta
	for id, ev := range b.redactedEvents {
		if _, ok := r.stateEvents[id]; ok {
			r.stateEvents[id] = ev
		}
	}
	for k, id := range b.overlay {
		if old, ok := r.state[k]; ok {
			delete(r.stateEvents, old)
		}
		if id == "" {
			delete(r.state, k)
			if k.Type == eventgraph.TypeMember {
				delete(r.members, k.StateKey)
			}
			continue
		}
		ev, _ := b.lookup(id)
		if ev == nil {
			// Every overlay entry was added or loaded by the batch.
			r.env.Log.Error("room: state event not loaded after commit", slog.String("event_id", id))
			continue
		}
		r.state[k] = id
		r.stateEvents[id] = ev
		switch k.Type {
		case eventgraph.TypeMember:
			mem, _ := ev.Membership()
			r.members[k.StateKey] = memberInfo{Membership: mem, Pos: b.overlayPos[k], EventID: id}
			if mem != eventgraph.MembershipJoin {
				delete(r.typing, k.StateKey)
			}
		case eventgraph.TypeCreate:
			r.create = ev
		}
	}
	if len(b.events) > 0 {
		old := r.extremities
		r.extremities = map[string]*eventgraph.Event{}
		for _, id := range meta.Extremities {
			if ev, ok := b.added[id]; ok {
				r.extremities[id] = ev
			} else if ev, ok := old[id]; ok {
				r.extremities[id] = ev
			} else if ev, _ := b.lookup(id); ev != nil {
				r.extremities[id] = ev
			}
		}
		r.exists = true
	}
	r.groupCacheAdd(meta.StateGroup, nil)
}

// notify sends RoomNotices after a commit: each membership event's local
// target learns its new membership, then every local joined member learns
// the new position. Published rooms refresh their directory entry when
// something the directory shows changed.
func (r *roomActor) notify(b *batch) {
	if len(b.events) == 0 {
		return
	}
	refresh := false
	for _, pe := range b.events {
		for _, d := range pe.deltas {
			switch d.Type {
			case eventgraph.TypeMember:
				target := d.StateKey
				mem := ""
				if ev, _ := b.lookup(d.New); ev != nil {
					mem, _ = ev.Membership()
				}
				if r.isLocal(target) {
					r.env.Router.Send(&pb.RoomNotice{UserId: target, RoomId: r.roomID, Pos: pe.rec.Pos,
						Membership: mem, EphemeralPos: r.ephPos})
				}
				refresh = true
			case "m.room.name", "m.room.topic", "m.room.avatar", "m.room.canonical_alias", eventgraph.TypeJoinRules,
				"m.room.history_visibility", "m.room.guest_access", eventgraph.TypeCreate:
				refresh = true
			}
		}
	}
	for user, m := range r.members {
		if m.Membership == eventgraph.MembershipJoin && r.isLocal(user) {
			r.env.Router.Send(&pb.RoomNotice{UserId: user, RoomId: r.roomID, Pos: r.meta.Pos, EphemeralPos: r.ephPos})
		}
	}
	if refresh && r.meta.Published {
		r.sendDirectoryRefresh()
	}
	r.notifyUserDir(b)
	r.sendPushNotices(b)
}

func (r *roomActor) sendDirectoryRefresh() {
	summary, err := json.Marshal(r.summary())
	if err != nil {
		r.env.Log.Error("room: encode summary", slog.Any("err", err))
		return
	}
	r.env.Router.Send(&pb.DirectoryOp{Op: "refresh", RoomId: r.roomID, Summary: summary, Pos: r.meta.Pos})
}

// notifyEphemeral tells local joined members (or only one user, for private
// receipts) that the ephemeral position moved.
func (r *roomActor) notifyEphemeral(only string) {
	for user, m := range r.members {
		if m.Membership != eventgraph.MembershipJoin || !r.isLocal(user) || (only != "" && user != only) {
			continue
		}
		r.env.Router.Send(&pb.RoomNotice{UserId: user, RoomId: r.roomID, Pos: r.meta.Pos, EphemeralPos: r.ephPos})
	}
}
