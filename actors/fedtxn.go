package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// The inbound actor of one remote server (identity fedtxn/<origin>) is the
// single writer of what this server remembers of the transactions origin
// sent, and routes origin's users' presence to local users.
//
// Transactions: the gateway claims a transaction before processing it and
// completes the claim with the response. A transaction already answered is
// answered again from storage, never processed twice; one being processed
// makes a concurrent copy wait for its outcome. Responses are kept for
// fedTxnKeepFor, at most maxFedTxnsKept per origin: a sender retries a
// transaction within minutes, and must not send another before the first
// succeeded.
//
// Presence: an m.presence EDU names users, not rooms, so the actor keeps,
// per user of origin, the rooms where the user was seen joined (told by
// local users' presence fan-outs, which see every member of their rooms,
// and by rooms receiving the user's typing or receipts). An update goes to
// the local members of those rooms, asked of each room on the remote
// user's behalf: a room where the user is no longer joined refuses, and is
// forgotten.
const (
	maxFedTxnsKept   = 1000
	fedTxnKeepFor    = 24 * time.Hour
	fedTxnClaimStale = 3 * time.Minute
	// maxFedTxnClaims bounds the distinct transactions of one origin in
	// processing at once (a sender waits for each to succeed before the
	// next, so more is a retry storm or abuse).
	maxFedTxnClaims  = 8
	maxFedTxnWaiters = 16
	// MaxFedTxnIDBytes bounds a transaction ID (a path segment).
	MaxFedTxnIDBytes = 255

	maxFedPresenceUsers     = 10000
	maxFedPresenceUserRooms = 256
	// maxFedPresenceDeliveries bounds the presence deliveries in flight
	// per origin; more updates meanwhile are dropped (presence is
	// ephemeral and the next update carries the latest state).
	maxFedPresenceDeliveries = 4
	fedPresenceTimeout       = 30 * time.Second
)

type fedTxnClaim struct {
	id      uint64
	at      time.Time
	waiters []*actor.PID
}

type fedTxnRef struct {
	id  string
	seq uint64
}

type fedTxnActor struct {
	env     *Env
	origin  string
	loaded  bool
	loadErr error

	txns    map[string]storage.FedTxn
	order   []fedTxnRef // oldest first
	nextSeq uint64

	claims   map[string]*fedTxnClaim
	claimSeq uint64

	presRooms map[string][]string // remote user → rooms, sorted
	// lastPresence is each remote user's latest presence (in memory): an
	// update that comes before this server knows the user's rooms (a
	// server tells its users' presence as soon as ours joins, often before
	// our join has finished) is delivered once the rooms are known.
	lastPresence map[string]*pb.PresenceNotice
	delivering   *atomic.Int32
}

// NewFedTxn makes the inbound actor of one remote server; its identity is
// fedtxn/<server name>.
func NewFedTxn(env *Env) actor.Actor {
	// Claim IDs start from the clock so that a claim from a previous
	// activation is never taken for one of this one's.
	return &fedTxnActor{env: env, origin: strings.TrimPrefix(env.Identity, pb.KindFedTxn+"/"),
		claims: map[string]*fedTxnClaim{}, claimSeq: uint64(time.Now().UnixNano()), delivering: &atomic.Int32{}}
}

func (a *fedTxnActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if a.env.IdleTimeout > 0 {
			ctx.SetReceiveTimeout(a.env.IdleTimeout)
		}
	case *actor.ReceiveTimeout:
		a.dropStaleClaims(ctx)
		if len(a.claims) == 0 && a.delivering.Load() == 0 {
			ctx.Send(ctx.Parent(), &pb.Passivate{Identity: a.env.Identity})
		} else {
			ctx.SetReceiveTimeout(a.env.IdleTimeout)
		}
	case *actor.Stopping:
		// Parked copies of a transaction get an error their sender retries.
		busy := ToPB(Errorf(http.StatusServiceUnavailable, "M_UNKNOWN", "transaction processing interrupted, retry"))
		for _, c := range a.claims {
			for _, w := range c.waiters {
				ctx.Send(w, busy)
			}
		}
		a.claims = map[string]*fedTxnClaim{}
	case *pb.FedTxnClaim:
		a.claim(ctx, m)
	case *pb.FedTxnComplete:
		err := a.complete(ctx, m)
		if ctx.Sender() != nil {
			if err != nil {
				ctx.Respond(ToPB(err))
			} else {
				ctx.Respond(&pb.Empty{})
			}
		}
	case *pb.FedPresenceRooms:
		if err := a.presenceRooms(m); err != nil {
			a.env.Log.Warn("fedtxn: presence rooms", slog.String("origin", a.origin), slog.Any("err", err))
		}
	case *pb.FedPresenceIn:
		a.presenceIn(m)
	}
}

func (a *fedTxnActor) load() error {
	if a.loaded {
		return a.loadErr
	}
	a.loaded = true
	a.txns = map[string]storage.FedTxn{}
	a.presRooms = map[string][]string{}
	a.loadErr = a.env.Partition.View(func(tx *bbolt.Tx) error {
		if err := storage.LoadFedTxns(tx, a.env.Identity, func(id string, t storage.FedTxn) {
			a.txns[id] = t
			a.order = append(a.order, fedTxnRef{id: id, seq: t.Seq})
			a.nextSeq = max(a.nextSeq, t.Seq)
		}); err != nil {
			return err
		}
		return storage.LoadFedPresenceRooms(tx, a.env.Identity, func(u string, rooms []string) {
			a.presRooms[u] = rooms
		})
	})
	if a.loadErr != nil {
		a.loadErr = fmt.Errorf("fedtxn %s: load: %w", a.origin, a.loadErr)
		a.env.Log.Error("fedtxn: load failed", slog.Any("err", a.loadErr))
		return a.loadErr
	}
	slices.SortFunc(a.order, func(x, y fedTxnRef) int { return cmpUint(x.seq, y.seq) })
	return nil
}

func cmpUint(x, y uint64) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// fresh reports whether a stored transaction still counts as answered.
func (a *fedTxnActor) fresh(t storage.FedTxn) bool {
	return a.env.NowMillis()-t.TS < fedTxnKeepFor.Milliseconds()
}

func (a *fedTxnActor) claim(ctx actor.Context, m *pb.FedTxnClaim) {
	if ctx.Sender() == nil {
		return
	}
	rep, err := a.claimFor(ctx, m)
	switch {
	case err != nil:
		ctx.Respond(ToPB(err))
	case rep != nil:
		ctx.Respond(rep)
	}
}

// claimFor answers a claim: the stored response, a new claim, or nil when
// the claimant was parked behind the current holder.
func (a *fedTxnActor) claimFor(ctx actor.Context, m *pb.FedTxnClaim) (*pb.FedTxnClaimReply, error) {
	if err := a.load(); err != nil {
		return nil, err
	}
	if m.TxnId == "" || len(m.TxnId) > MaxFedTxnIDBytes {
		return nil, ErrInvalidParam("invalid transaction ID")
	}
	if t, ok := a.txns[m.TxnId]; ok && a.fresh(t) {
		var resp []byte
		err := a.env.Partition.View(func(tx *bbolt.Tx) error {
			var err error
			resp, err = storage.FedTxnResponse(tx, a.env.Identity, m.TxnId)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("fedtxn %s: read response: %w", a.origin, err)
		}
		if len(resp) > 0 {
			return &pb.FedTxnClaimReply{Done: true, Response: resp}, nil
		}
	}
	now := a.env.Now()
	if c := a.claims[m.TxnId]; c != nil && now.Sub(c.at) < fedTxnClaimStale {
		if len(c.waiters) >= maxFedTxnWaiters {
			return nil, Errorf(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "transaction %s is being processed", m.TxnId)
		}
		c.waiters = append(c.waiters, ctx.Sender())
		return nil, nil
	}
	a.dropStaleClaims(ctx)
	if len(a.claims) >= maxFedTxnClaims {
		e := Errorf(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "too many transactions in processing")
		e.Extra = map[string]any{"retry_after_ms": 1000}
		return nil, e
	}
	a.claimSeq++
	a.claims[m.TxnId] = &fedTxnClaim{id: a.claimSeq, at: now}
	return &pb.FedTxnClaimReply{Claim: a.claimSeq}, nil
}

// dropStaleClaims ends the claims whose holder has been silent for
// fedTxnClaimStale: it is gone (its node died, or its completion was
// lost). Copies still parked behind one get an error their sender retries.
func (a *fedTxnActor) dropStaleClaims(ctx actor.Context) {
	now := a.env.Now()
	for id, c := range a.claims {
		if now.Sub(c.at) < fedTxnClaimStale {
			continue
		}
		if len(c.waiters) > 0 {
			busy := ToPB(Errorf(http.StatusServiceUnavailable, "M_UNKNOWN", "transaction processing timed out, retry"))
			for _, w := range c.waiters {
				ctx.Send(w, busy)
			}
		}
		delete(a.claims, id)
	}
}

func (a *fedTxnActor) complete(ctx actor.Context, m *pb.FedTxnComplete) error {
	if err := a.load(); err != nil {
		return err
	}
	c := a.claims[m.TxnId]
	if c == nil || c.id != m.Claim {
		// The claim lapsed and went to another caller, whose outcome
		// counts.
		return nil
	}
	if len(m.Response) == 0 {
		// Given up: the next waiter, if any, processes it afresh.
		if len(c.waiters) == 0 {
			delete(a.claims, m.TxnId)
			return nil
		}
		next := c.waiters[0]
		c.waiters = slices.Delete(c.waiters, 0, 1)
		a.claimSeq++
		c.id, c.at = a.claimSeq, a.env.Now()
		ctx.Send(next, &pb.FedTxnClaimReply{Claim: c.id})
		return nil
	}
	delete(a.claims, m.TxnId)
	done := &pb.FedTxnClaimReply{Done: true, Response: m.Response}
	for _, w := range c.waiters {
		ctx.Send(w, done)
	}
	return a.store(m.TxnId, m.Response)
}

// store persists a response and evicts what is over the bounds, oldest
// first.
func (a *fedTxnActor) store(txnID string, response []byte) error {
	nowMS := a.env.NowMillis()
	t := storage.FedTxn{Seq: a.nextSeq + 1, TS: nowMS}
	_, replaced := a.txns[txnID]
	n := len(a.order)
	if !replaced {
		n++
	}
	evict := 0
	for evict < len(a.order) {
		ref := a.order[evict]
		old := a.txns[ref.id]
		if n-evict <= maxFedTxnsKept && a.fresh(old) {
			break
		}
		evict++
	}
	gone := a.order[:evict]
	identity := a.env.Identity
	err := a.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		for _, ref := range gone {
			if ref.id == txnID {
				continue
			}
			if err := storage.DeleteFedTxn(tx, identity, ref.id); err != nil {
				return err
			}
		}
		return storage.PutFedTxn(tx, identity, txnID, t, response)
	})
	if err != nil {
		return fmt.Errorf("fedtxn %s: store response: %w", a.origin, err)
	}
	for _, ref := range gone {
		delete(a.txns, ref.id)
	}
	a.order = slices.Clone(a.order[evict:])
	if replaced {
		a.order = slices.DeleteFunc(a.order, func(r fedTxnRef) bool { return r.id == txnID })
	}
	a.nextSeq = t.Seq
	a.txns[txnID] = t
	a.order = append(a.order, fedTxnRef{id: txnID, seq: t.Seq})
	return nil
}

// ---- presence ----

func (a *fedTxnActor) presenceRooms(m *pb.FedPresenceRooms) error {
	if err := a.load(); err != nil {
		return err
	}
	changed := map[string][]string{}
	for _, ur := range m.Users {
		if serverOf(ur.UserId) != a.origin || len(ur.UserId) > maxIDBytes {
			continue
		}
		cur, ok := changed[ur.UserId]
		if !ok {
			cur = a.presRooms[ur.UserId]
		}
		next := slices.Clone(cur)
		for _, room := range ur.RoomIds {
			if room == "" || len(room) > maxIDBytes {
				continue
			}
			i, found := slices.BinarySearch(next, room)
			switch {
			case m.Left && found:
				next = slices.Delete(next, i, i+1)
			case !m.Left && !found && len(next) < maxFedPresenceUserRooms:
				next = slices.Insert(next, i, room)
			}
		}
		if !slices.Equal(next, cur) {
			changed[ur.UserId] = next
		}
	}
	if len(changed) == 0 {
		return nil
	}
	// Beyond the bound, users the actor knows nothing new of make room
	// for the newcomers; which ones is arbitrary.
	var evicted []string
	for u := range changed {
		if _, known := a.presRooms[u]; !known && len(a.presRooms)+1-len(evicted) > maxFedPresenceUsers {
			for victim := range a.presRooms {
				if _, c := changed[victim]; !c && !slices.Contains(evicted, victim) {
					evicted = append(evicted, victim)
					break
				}
			}
		}
	}
	identity := a.env.Identity
	err := a.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		for u, rooms := range changed {
			if err := storage.PutFedPresenceRooms(tx, identity, u, rooms); err != nil {
				return err
			}
		}
		for _, u := range evicted {
			if err := storage.PutFedPresenceRooms(tx, identity, u, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("fedtxn %s: store presence rooms: %w", a.origin, err)
	}
	for _, u := range evicted {
		delete(a.presRooms, u)
	}
	var late []*pb.PresenceNotice
	for u, rooms := range changed {
		if len(rooms) == 0 {
			delete(a.presRooms, u)
		} else {
			a.presRooms[u] = rooms
			if n := a.lastPresence[u]; n != nil && !m.Left {
				late = append(late, n)
			}
		}
	}
	if len(late) > 0 {
		a.presenceIn(&pb.FedPresenceIn{Origin: a.origin, Notices: late})
	}
	return nil
}

// presenceIn delivers presence updates to the local users sharing a room
// with each sender, from a goroutine (it waits on the rooms' answers).
func (a *fedTxnActor) presenceIn(m *pb.FedPresenceIn) {
	if err := a.load(); err != nil {
		return
	}
	type job struct {
		notice *pb.PresenceNotice
		rooms  []string
	}
	var jobs []job
	for _, n := range m.Notices {
		if serverOf(n.Sender) != a.origin {
			continue
		}
		if a.lastPresence == nil {
			a.lastPresence = map[string]*pb.PresenceNotice{}
		}
		if _, known := a.lastPresence[n.Sender]; !known && len(a.lastPresence) >= maxFedPresenceUsers {
			for victim := range a.lastPresence {
				delete(a.lastPresence, victim)
				break
			}
		}
		a.lastPresence[n.Sender] = n
		if rooms := a.presRooms[n.Sender]; len(rooms) > 0 {
			jobs = append(jobs, job{notice: n, rooms: slices.Clone(rooms)})
		}
	}
	if len(jobs) == 0 {
		return
	}
	if a.delivering.Add(1) > maxFedPresenceDeliveries {
		a.delivering.Add(-1)
		a.env.Log.Debug("fedtxn: presence delivery dropped", slog.String("origin", a.origin))
		return
	}
	router, server, origin, log, inFlight := a.env.Router, a.env.Server.ServerName, a.origin, a.env.Log, a.delivering
	go func() {
		defer inFlight.Add(-1)
		ctx, cancel := context.WithTimeout(context.Background(), fedPresenceTimeout)
		defer cancel()
		left := &pb.FedPresenceRooms{Origin: origin, Left: true}
		for _, j := range jobs {
			var (
				mu   sync.Mutex
				gone []string
			)
			// onErr runs on the lookups' goroutines.
			peers := LocalRoomPeers(ctx, router, server, j.notice.Sender, j.rooms, func(room string, err error) {
				var me *MatrixError
				if errors.As(err, &me) && me.Status == http.StatusForbidden {
					mu.Lock()
					gone = append(gone, room)
					mu.Unlock()
					return
				}
				log.Debug("fedtxn: presence delivery: room members", slog.String("room", room), slog.Any("err", err))
			})
			for peer := range peers {
				n := proto.Clone(j.notice).(*pb.PresenceNotice)
				n.UserId = peer
				router.Send(n)
			}
			if len(gone) > 0 {
				left.Users = append(left.Users, &pb.FedUserRooms{UserId: j.notice.Sender, RoomIds: gone})
			}
		}
		if len(left.Users) > 0 {
			router.Send(left)
		}
	}()
}
