package actors

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// KeyFetcher reaches other servers for their keys. The gateway implements
// it with its federation client; it is called from the fetch goroutine of a
// server actor, never from inside Receive.
type KeyFetcher interface {
	// ServerKeys returns name's answer to GET /_matrix/key/v2/server.
	ServerKeys(ctx context.Context, name string) ([]byte, error)
	// NotaryKeys returns notary's answer to GET
	// /_matrix/key/v2/query/{name}.
	NotaryKeys(ctx context.Context, notary, name string) ([]byte, error)
}

// ServerActorConfig is what the server actors of a node share.
type ServerActorConfig struct {
	Fetcher KeyFetcher
	// Notaries are asked, in order, when the server itself cannot be.
	Notaries []Notary
	// FetchTimeout bounds one fetch, notaries included (zero: 25 s, within
	// the 30 s a request waits for an actor's reply).
	FetchTimeout time.Duration
	// RetryAfter is how long a failed fetch is not repeated (zero: 1 min).
	RetryAfter time.Duration
}

// maxKeyWaiters bounds the queries parked on one fetch; more are answered
// at once with what is cached.
const maxKeyWaiters = 1024

// keyFetchAttempt bounds each try of a fetch (the server itself, then
// each notary), so that a server that hangs leaves time for the notaries.
const keyFetchAttempt = 10 * time.Second

// minRefetch separates two successful fetches of one server's keys.
const minRefetch = 10 * time.Second

// NewServerKind returns the constructor of the server actors (identity
// server/<server_name>) bound to cfg.
func NewServerKind(cfg ServerActorConfig) func(env *Env) actor.Actor {
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 25 * time.Second
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = time.Minute
	}
	return func(env *Env) actor.Actor {
		// Fetch IDs start from the clock so that the result of a previous
		// activation's fetch is never taken for this one's.
		return &serverActor{env: env, cfg: cfg, name: strings.TrimPrefix(env.Identity, pb.KindServer+"/"),
			fetchID: uint64(time.Now().UnixNano())}
	}
}

// serverActor holds one remote server's signing keys: it is their single
// writer. A fetch runs in a goroutine that sends its result back as
// ServerKeysFetched, so the actor keeps answering (from its cache) while
// the network is slow; queries that need the fetch wait for it, parked.
type serverActor struct {
	env    *Env
	cfg    ServerActorConfig
	name   string
	loaded bool
	keys   storage.ServerKeys

	fetching     bool
	fetchID      uint64
	fetchStarted time.Time
	failedAt     time.Time
	waiting      []keyWaiter
}

type keyWaiter struct {
	sender *actor.PID
	q      *pb.ServerKeysQuery
}

func (a *serverActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if a.env.IdleTimeout > 0 {
			ctx.SetReceiveTimeout(a.env.IdleTimeout)
		}
	case *actor.ReceiveTimeout:
		if !a.fetching && len(a.waiting) == 0 {
			ctx.Send(ctx.Parent(), &pb.Passivate{Identity: a.env.Identity})
		} else {
			ctx.SetReceiveTimeout(a.env.IdleTimeout)
		}
	case *actor.Stopping:
		a.answerWaiting(ctx)
	case *pb.ServerKeysQuery:
		a.query(ctx, m)
	case *pb.ServerKeysFetched:
		a.fetched(ctx, m)
	}
}

func (a *serverActor) load() error {
	if a.loaded {
		return nil
	}
	if _, _, err := eventgraph.ParseServerName(a.name); err != nil {
		return ErrInvalidParam("invalid server name")
	}
	err := a.env.Partition.View(func(tx *bbolt.Tx) error {
		k, _, err := storage.ServerKeysOf(tx, a.env.Identity)
		a.keys = k
		return err
	})
	if err != nil {
		return fmt.Errorf("server %s: load: %w", a.name, err)
	}
	if a.keys.Keys == nil {
		a.keys.Keys = map[string]storage.ServerKey{}
	}
	a.loaded = true
	return nil
}

func (a *serverActor) query(ctx actor.Context, q *pb.ServerKeysQuery) {
	if err := a.load(); err != nil {
		if ctx.Sender() != nil {
			ctx.Respond(ToPB(err))
		}
		return
	}
	now := a.env.Now()
	need := !q.CachedOnly && ctx.Sender() != nil && a.name != a.env.Server.ServerName && a.needFetch(q, now.UnixMilli())
	// A result that never came back (its message lost in a handoff) must
	// not stop every later fetch.
	inFlight := a.fetching && now.Sub(a.fetchStarted) <= a.cfg.FetchTimeout+10*time.Second
	// After a failure, or a success whose keys do not satisfy the query,
	// the server is not asked again at once.
	mayStart := now.Sub(a.failedAt) >= a.cfg.RetryAfter && now.UnixMilli()-a.keys.FetchedTS >= minRefetch.Milliseconds()
	if need && len(a.waiting) < maxKeyWaiters && (inFlight || mayStart) {
		a.waiting = append(a.waiting, keyWaiter{sender: ctx.Sender(), q: q})
		if !inFlight {
			a.startFetch(now)
		}
		return
	}
	if ctx.Sender() != nil {
		ctx.Respond(a.reply())
	}
}

// needFetch reports whether q asks for something the cache lacks: a key it
// does not know (or a current one expiring before min_valid_until_ts), or
// with no key IDs, any current key valid that long.
func (a *serverActor) needFetch(q *pb.ServerKeysQuery, nowMS int64) bool {
	minValid := max(q.MinValidUntilTs, nowMS)
	if len(q.KeyIds) > 0 {
		for _, id := range q.KeyIds {
			k, ok := a.keys.Keys[id]
			if !ok || !k.Old && k.ValidUntilTS < minValid {
				return true
			}
		}
		return false
	}
	for _, k := range a.keys.Keys {
		if !k.Old && k.ValidUntilTS >= minValid {
			return false
		}
	}
	return true
}

func (a *serverActor) startFetch(now time.Time) {
	a.fetchID++
	a.fetching, a.fetchStarted = true, now
	id, name, cfg, router, nowMS := a.fetchID, a.name, a.cfg, a.env.Router, now.UnixMilli()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.FetchTimeout)
		defer cancel()
		router.Send(fetchKeys(ctx, cfg, name, id, nowMS))
	}()
}

// fetchKeys asks the server itself, then each notary in turn, and returns
// the first usable answer (or every error) as the actor's message.
func fetchKeys(ctx context.Context, cfg ServerActorConfig, name string, id uint64, nowMS int64) *pb.ServerKeysFetched {
	msg := &pb.ServerKeysFetched{ServerName: name, Fetch: id}
	var errs []string
	attempt := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, keyFetchAttempt) }
	actx, cancel := attempt()
	raw, err := cfg.Fetcher.ServerKeys(actx, name)
	cancel()
	if err == nil {
		_, err = ParseServerKeyResponse(raw, name, nowMS)
	}
	if err == nil {
		msg.Responses = [][]byte{raw}
		return msg
	}
	errs = append(errs, "direct: "+err.Error())
	for _, n := range cfg.Notaries {
		if ctx.Err() != nil {
			break
		}
		actx, cancel := attempt()
		body, err := cfg.Fetcher.NotaryKeys(actx, n.ServerName, name)
		cancel()
		var rs [][]byte
		if err == nil {
			rs, err = NotaryResponses(body, n, name, nowMS)
		}
		if err == nil {
			msg.Responses, msg.Via = rs, n.ServerName
			return msg
		}
		errs = append(errs, "notary "+n.ServerName+": "+err.Error())
	}
	msg.Error = strings.Join(errs, "; ")
	return msg
}

// fetched keeps what a fetch brought (after checking it again: the message
// could come from anywhere inside the cluster) and answers the waiters.
func (a *serverActor) fetched(ctx actor.Context, m *pb.ServerKeysFetched) {
	if err := a.load(); err != nil {
		a.env.Log.Error("server: load keys", slog.Any("err", err))
		return
	}
	mine := a.fetching && m.Fetch == a.fetchID
	if mine {
		a.fetching = false
	}
	now := a.env.Now()
	nowMS := now.UnixMilli()
	var notary *Notary
	if m.Via != "" {
		for i := range a.cfg.Notaries {
			if a.cfg.Notaries[i].ServerName == m.Via {
				notary = &a.cfg.Notaries[i]
			}
		}
	}
	found := map[string]storage.ServerKey{}
	var responses []json.RawMessage
	for _, raw := range m.Responses {
		keys, err := ParseServerKeyResponse(raw, a.name, nowMS)
		if err == nil && m.Via != "" {
			if notary == nil {
				err = fmt.Errorf("%s is not a configured notary", m.Via)
			} else {
				err = checkNotarySignature(raw, *notary)
			}
		}
		if err != nil {
			a.env.Log.Warn("server: refusing key response", slog.String("server", a.name), slog.Any("err", err))
			continue
		}
		maps.Copy(found, keys)
		if len(responses) < 8 {
			responses = append(responses, json.RawMessage(raw))
		}
	}
	if len(found) == 0 {
		if m.Error != "" {
			a.env.Log.Info("server: key fetch failed", slog.String("server", a.name), slog.String("err", m.Error))
		}
		if mine {
			a.failedAt = now
		}
	} else if err := a.keep(found, responses, nowMS); err != nil {
		a.env.Log.Error("server: store keys", slog.String("server", a.name), slog.Any("err", err))
		if mine {
			a.failedAt = now
		}
	} else if mine {
		a.failedAt = time.Time{}
	}
	if mine {
		a.answerWaiting(ctx)
	}
}

// keep merges found into the cache and persists it. Keys a newer response
// no longer lists stay known with the validity they had; the oldest are
// dropped beyond maxKeysPerServer.
func (a *serverActor) keep(found map[string]storage.ServerKey, responses []json.RawMessage, nowMS int64) error {
	next := storage.ServerKeys{Keys: maps.Clone(a.keys.Keys), Responses: responses, FetchedTS: nowMS}
	maps.Copy(next.Keys, found)
	if len(next.Keys) > maxKeysPerServer {
		ids := slices.Collect(maps.Keys(next.Keys))
		slices.SortFunc(ids, func(x, y string) int {
			return int(min(max(next.Keys[x].ValidUntilTS-next.Keys[y].ValidUntilTS, -1), 1))
		})
		for _, id := range ids[:len(ids)-maxKeysPerServer] {
			delete(next.Keys, id)
		}
	}
	identity := a.env.Identity
	if err := a.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		return storage.PutServerKeys(tx, identity, next)
	}); err != nil {
		return err
	}
	a.keys = next
	return nil
}

func (a *serverActor) answerWaiting(ctx actor.Context) {
	waiting := a.waiting
	a.waiting = nil
	if len(waiting) == 0 {
		return
	}
	rep := a.reply()
	for _, w := range waiting {
		ctx.Send(w.sender, rep)
	}
}

func (a *serverActor) reply() *pb.ServerKeysReply {
	rep := &pb.ServerKeysReply{}
	ids := slices.Sorted(maps.Keys(a.keys.Keys))
	for _, id := range ids {
		k := a.keys.Keys[id]
		rep.Keys = append(rep.Keys, &pb.ServerKey{KeyId: id, Key: k.Key, ValidUntilTs: k.ValidUntilTS, Old: k.Old})
	}
	for _, r := range a.keys.Responses {
		rep.Responses = append(rep.Responses, r)
	}
	return rep
}
