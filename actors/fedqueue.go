package actors

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// TransactionSender sends one federation transaction (PUT
// /_matrix/federation/v1/send/{txnId}) and returns the response body. The
// gateway implements it with its federation client; it is called from the
// sending goroutine of a queue actor, never from inside Receive. An error
// is retried unless it is a *TxnError saying otherwise.
type TransactionSender interface {
	SendTransaction(ctx context.Context, destination, txnID string, body []byte) ([]byte, error)
}

// TxnError is a failed transaction with what the queue must do about it.
type TxnError struct {
	// Status is the HTTP status the destination answered (0: none).
	Status int
	// Retry: the same transaction goes again after a backoff (network
	// errors, 5xx, 429); otherwise its batch is dropped (other 4xx: the
	// destination will never take it).
	Retry bool
	Err   error
}

func (e *TxnError) Error() string {
	return fmt.Sprintf("transaction: status %d (retry %t): %v", e.Status, e.Retry, e.Err)
}

func (e *TxnError) Unwrap() error { return e.Err }

// Limits of the outbound queues. The transaction limits are the spec's.
const (
	maxTxnPDUs = 50
	maxTxnEDUs = 100
	// maxTxnBytes bounds the items of one transaction (one item may exceed
	// it alone: PDUs are bounded to 64 KiB elsewhere).
	maxTxnBytes = 4 << 20
	// maxEnqueueItems bounds the items of one FedEnqueue.
	maxEnqueueItems = 1000
	// maxFedKeyLen bounds room IDs, EDU types and coalescing keys, which
	// become storage keys.
	maxFedKeyLen = 1024
)

// FedQueueConfig is what the queue actors of a node share.
type FedQueueConfig struct {
	Sender TransactionSender
	// BackoffBase is the wait after a first failure, doubled with each
	// further failure up to BackoffMax, plus up to a quarter of random
	// jitter (zero: 2 s and 1 h).
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// SendTimeout bounds one attempt (zero: 60 s).
	SendTimeout time.Duration
	// MaxPDUs bounds the PDUs stored per destination (zero: 10,000). Over
	// it, the queue drops its oldest PDUs down to nine tenths of it,
	// keeping each room's KeepPerRoom newest (zero: 10) so that the
	// destination can fetch the gap with /get_missing_events.
	MaxPDUs     int
	KeepPerRoom int
	// MaxEDUs bounds the EDUs stored per destination (zero: 10,000); over
	// it the oldest are dropped.
	MaxEDUs int
	// Stats, when set, counts for metrics.
	Stats *FedQueueStats
}

// FedQueueStats are the counters of a node's queues, for metrics.
type FedQueueStats struct {
	// QueuedPDUs is the number of PDUs stored in the queues active on the
	// node (a queue with something stored stays active).
	QueuedPDUs atomic.Int64
	// Sent and Failed count transactions: accepted, and failed attempts
	// (retried or dropped).
	Sent   atomic.Uint64
	Failed atomic.Uint64
}

// NewFedQueueKind returns the constructor of the outbound federation
// queues (identity fedqueue/<server name>) bound to cfg.
func NewFedQueueKind(cfg FedQueueConfig) func(env *Env) actor.Actor {
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 2 * time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = time.Hour
	}
	if cfg.SendTimeout <= 0 {
		cfg.SendTimeout = 60 * time.Second
	}
	if cfg.MaxPDUs <= 0 {
		cfg.MaxPDUs = 10000
	}
	if cfg.KeepPerRoom <= 0 {
		cfg.KeepPerRoom = 10
	}
	if cfg.MaxEDUs <= 0 {
		cfg.MaxEDUs = 10000
	}
	return func(env *Env) actor.Actor {
		return &fedQueue{env: env, cfg: cfg, dest: strings.TrimPrefix(env.Identity, pb.KindFedQueue+"/"),
			// Attempt IDs start from the clock so that a result of a
			// previous activation's attempt is never taken for this one's.
			attempt: uint64(time.Now().UnixNano())}
	}
}

// fedQueue is the outbound queue of one destination server and the single
// writer of what is stored for it. Everything queued is persisted before
// anything else happens to it; one transaction is in flight at a time,
// sent by a goroutine that reports back with FedQueueResult. A failed
// transaction is sent again, with the same ID and items, after a backoff
// that is persisted too, so a restart continues where it stopped.
type fedQueue struct {
	env    *Env
	cfg    FedQueueConfig
	dest   string
	loaded bool
	meta   storage.FedQueueMeta

	inFlight bool
	attempt  uint64
	sentAt   time.Time
	timer    *time.Timer
	// fresh are the items of the batch the last storage transaction made.
	fresh *batchItems
	// counted is what this activation added to cfg.Stats.QueuedPDUs.
	counted int
}

func (a *fedQueue) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if a.env.IdleTimeout > 0 {
			ctx.SetReceiveTimeout(a.env.IdleTimeout)
		}
	case *actor.ReceiveTimeout:
		a.checkLost()
		if !a.inFlight && a.empty() {
			ctx.Send(ctx.Parent(), &pb.Passivate{Identity: a.env.Identity})
			return
		}
		a.pump()
		ctx.SetReceiveTimeout(a.env.IdleTimeout)
	case *actor.Stopping:
		if a.timer != nil {
			a.timer.Stop()
		}
		a.count(-a.counted)
	case *pb.FedEnqueue:
		a.enqueue(ctx, m)
	case *pb.FedQueueWake:
		if a.load() == nil {
			a.checkLost()
			if m.RetryNow {
				a.endBackoff()
			}
			a.pump()
		}
	case *pb.FedQueueResult:
		a.result(m)
	}
}

func (a *fedQueue) empty() bool {
	return !a.loaded || a.meta.PDUs+a.meta.EDUs == 0 && a.meta.Batch == nil
}

func (a *fedQueue) count(delta int) {
	a.counted += delta
	if a.cfg.Stats != nil && delta != 0 {
		a.cfg.Stats.QueuedPDUs.Add(int64(delta))
	}
}

func (a *fedQueue) load() error {
	if a.loaded {
		return nil
	}
	if _, _, err := eventgraph.ParseServerName(a.dest); err != nil {
		return ErrInvalidParam("invalid server name")
	}
	err := a.env.Partition.View(func(tx *bbolt.Tx) error {
		m, err := storage.FedQueueMetaOf(tx, a.env.Identity)
		a.meta = m
		return err
	})
	if err != nil {
		return fmt.Errorf("fedqueue %s: load: %w", a.dest, err)
	}
	a.loaded = true
	a.count(a.meta.PDUs)
	return nil
}

// update runs fn on a copy of the header in one storage transaction and
// keeps the copy once it is durable.
func (a *fedQueue) update(fn func(tx *bbolt.Tx, m *storage.FedQueueMeta) error) error {
	var next storage.FedQueueMeta
	err := a.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		next = a.meta
		if err := fn(tx, &next); err != nil {
			return err
		}
		return storage.PutFedQueueMeta(tx, a.env.Identity, next)
	})
	if err != nil {
		return fmt.Errorf("fedqueue %s: %w", a.dest, err)
	}
	a.count(next.PDUs - a.meta.PDUs)
	a.meta = next
	return nil
}

func (a *fedQueue) enqueue(ctx actor.Context, m *pb.FedEnqueue) {
	respond := func(err error) {
		if ctx.Sender() == nil {
			return
		}
		if err != nil {
			ctx.Respond(ToPB(err))
		} else {
			ctx.Respond(&pb.Empty{})
		}
	}
	if m.Destination == a.env.Server.ServerName {
		// Our own server has the events already.
		respond(nil)
		return
	}
	if len(m.Pdus)+len(m.Edus) > maxEnqueueItems {
		respond(ErrInvalidParam("too many items in one enqueue"))
		return
	}
	if err := a.load(); err != nil {
		a.env.Log.Error("fedqueue: load", slog.Any("err", err))
		respond(err)
		return
	}
	pdus := make([]storage.FedQueuePDU, 0, len(m.Pdus))
	for _, p := range m.Pdus {
		if !isJSONObject(p) || len(m.RoomId) > maxFedKeyLen || strings.IndexByte(m.RoomId, 0) >= 0 {
			a.env.Log.Warn("fedqueue: refusing a malformed PDU", slog.String("destination", a.dest))
			continue
		}
		pdus = append(pdus, storage.FedQueuePDU{RoomID: m.RoomId, PDU: p})
	}
	edus := make([]storage.FedQueueEDU, 0, len(m.Edus))
	for _, e := range m.Edus {
		if e.EduType == "" || len(e.EduType) > maxFedKeyLen || len(e.Key) > maxFedKeyLen || strings.IndexByte(e.EduType, 0) >= 0 ||
			!isJSONObject(e.Content) {
			a.env.Log.Warn("fedqueue: refusing a malformed EDU", slog.String("destination", a.dest), slog.String("type", e.EduType))
			continue
		}
		edus = append(edus, storage.FedQueueEDU{Type: e.EduType, Key: e.Key, Content: e.Content})
	}
	if len(pdus)+len(edus) == 0 {
		respond(nil)
		return
	}
	var droppedPDUs, droppedEDUs int
	now := a.env.Now()
	err := a.update(func(tx *bbolt.Tx, next *storage.FedQueueMeta) error {
		droppedPDUs, droppedEDUs = 0, 0
		if err := storage.AppendFedQueue(tx, a.env.Identity, next, pdus, edus); err != nil {
			return err
		}
		var err error
		if next.PDUs > a.cfg.MaxPDUs {
			if droppedPDUs, err = storage.TrimFedQueuePDUs(tx, a.env.Identity, next, a.cfg.MaxPDUs*9/10, a.cfg.KeepPerRoom); err != nil {
				return err
			}
		}
		if next.EDUs > a.cfg.MaxEDUs {
			if droppedEDUs, err = storage.TrimFedQueueEDUs(tx, a.env.Identity, next, a.cfg.MaxEDUs*9/10); err != nil {
				return err
			}
		}
		return a.makeBatch(tx, next, now)
	})
	if err != nil {
		a.env.Log.Error("fedqueue: store", slog.String("destination", a.dest), slog.Any("err", err))
		respond(err)
		return
	}
	if droppedPDUs+droppedEDUs > 0 {
		a.env.Log.Warn("fedqueue: queue over its bound, oldest items dropped (the destination catches up with /get_missing_events)",
			slog.String("destination", a.dest), slog.Int("pdus", droppedPDUs), slog.Int("edus", droppedEDUs))
	}
	respond(nil)
	a.pump()
}

func isJSONObject(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	return len(b) > 0 && b[0] == '{' && json.Valid(b)
}

// endBackoff forgets past failures: the destination is known to be back.
func (a *fedQueue) endBackoff() {
	if a.meta.Failures == 0 && a.meta.RetryAtMS == 0 {
		return
	}
	if err := a.update(func(_ *bbolt.Tx, m *storage.FedQueueMeta) error {
		m.Failures, m.RetryAtMS = 0, 0
		return nil
	}); err != nil {
		a.env.Log.Error("fedqueue: end backoff", slog.String("destination", a.dest), slog.Any("err", err))
	}
}

// checkLost gives up on an attempt whose result never came (its message
// lost, e.g. in a partition handoff), so that sending does not stop.
func (a *fedQueue) checkLost() {
	if a.inFlight && a.env.Now().Sub(a.sentAt) > a.cfg.SendTimeout+30*time.Second {
		a.env.Log.Warn("fedqueue: the result of a transaction never came", slog.String("destination", a.dest))
		a.inFlight = false
	}
}

// pump starts the next attempt unless one is in flight or the backoff of
// the last failure runs.
func (a *fedQueue) pump() {
	if a.inFlight || a.empty() || a.dest == a.env.Server.ServerName {
		return
	}
	now := a.env.Now()
	if at := time.UnixMilli(a.meta.RetryAtMS); a.meta.RetryAtMS > 0 && now.Before(at) {
		a.armTimer(at.Sub(now))
		a.fresh = nil
		return
	}
	for range 3 {
		if a.meta.Batch == nil {
			if err := a.update(func(tx *bbolt.Tx, m *storage.FedQueueMeta) error { return a.makeBatch(tx, m, now) }); err != nil {
				a.env.Log.Error("fedqueue: make a transaction", slog.String("destination", a.dest), slog.Any("err", err))
				a.armTimer(a.cfg.BackoffBase)
				return
			}
			if a.meta.Batch == nil {
				return
			}
		}
		items := a.fresh
		a.fresh = nil
		if items == nil || items.txnID != a.meta.Batch.TxnID {
			items = &batchItems{txnID: a.meta.Batch.TxnID}
			if err := a.env.Partition.View(func(tx *bbolt.Tx) error {
				var err error
				items.pdus, items.edus, err = storage.FedQueueItems(tx, a.env.Identity, a.meta.Batch)
				return err
			}); err != nil {
				a.env.Log.Error("fedqueue: read a transaction", slog.String("destination", a.dest), slog.Any("err", err))
				a.armTimer(a.cfg.BackoffBase)
				return
			}
		}
		if len(items.pdus)+len(items.edus) == 0 {
			// Nothing of it is left (it cannot normally happen): forget it.
			if err := a.update(func(_ *bbolt.Tx, m *storage.FedQueueMeta) error { m.Batch = nil; return nil }); err != nil {
				a.env.Log.Error("fedqueue: drop an empty transaction", slog.String("destination", a.dest), slog.Any("err", err))
				return
			}
			continue
		}
		a.send(now, items.pdus, items.edus)
		return
	}
}

// batchItems are the items of a batch just made, kept from the storage
// transaction that made it until its first attempt reads them.
type batchItems struct {
	txnID string
	pdus  []storage.FedQueuePDU
	edus  []storage.FedQueueEDU
}

// makeBatch makes, inside the storage transaction that changes the queue,
// the next transaction of the oldest items when none is pending and the
// queue may send (nothing in flight, no backoff running). The batch is
// persisted with the change, so that every attempt sends the same ID with
// the same items at no extra commit.
func (a *fedQueue) makeBatch(tx *bbolt.Tx, m *storage.FedQueueMeta, now time.Time) error {
	a.fresh = nil
	if a.inFlight || m.Batch != nil || m.PDUs+m.EDUs == 0 || m.RetryAtMS > now.UnixMilli() || a.dest == a.env.Server.ServerName {
		return nil
	}
	pdus, edus, err := storage.FedQueueHead(tx, a.env.Identity, maxTxnPDUs, maxTxnEDUs, maxTxnBytes)
	if err != nil || len(pdus)+len(edus) == 0 {
		return err
	}
	b := &storage.FedQueueBatch{}
	for _, p := range pdus {
		b.PDUs = append(b.PDUs, p.Seq)
	}
	for _, e := range edus {
		b.EDUs = append(b.EDUs, e.Seq)
	}
	m.Txns++
	// The clock makes the ID unique even if the queue's storage was lost
	// and its counter started again.
	b.TxnID = strconv.FormatInt(now.UnixMilli(), 10) + "." + strconv.FormatUint(m.Txns, 10)
	m.Batch = b
	a.fresh = &batchItems{txnID: b.TxnID, pdus: pdus, edus: edus}
	return nil
}

// transactionBody is the JSON of a transaction: PDUs and EDU contents go
// byte for byte as they were queued.
func transactionBody(origin string, ts int64, pdus []storage.FedQueuePDU, edus []storage.FedQueueEDU) []byte {
	var buf bytes.Buffer
	o, _ := json.Marshal(origin)
	buf.WriteString(`{"origin":`)
	buf.Write(o)
	buf.WriteString(`,"origin_server_ts":`)
	buf.WriteString(strconv.FormatInt(ts, 10))
	buf.WriteString(`,"pdus":[`)
	for i, p := range pdus {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(p.PDU)
	}
	buf.WriteString(`],"edus":[`)
	for i, e := range edus {
		if i > 0 {
			buf.WriteByte(',')
		}
		t, _ := json.Marshal(e.Type)
		buf.WriteString(`{"edu_type":`)
		buf.Write(t)
		buf.WriteString(`,"content":`)
		buf.Write(e.Content)
		buf.WriteByte('}')
	}
	buf.WriteString(`]}`)
	return buf.Bytes()
}

func (a *fedQueue) send(now time.Time, pdus []storage.FedQueuePDU, edus []storage.FedQueueEDU) {
	a.attempt++
	a.inFlight, a.sentAt = true, now
	body := transactionBody(a.env.Server.ServerName, now.UnixMilli(), pdus, edus)
	res := &pb.FedQueueResult{Destination: a.dest, Attempt: a.attempt, TxnId: a.meta.Batch.TxnID}
	cfg, router, log := a.cfg, a.env.Router, a.env.Log
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.SendTimeout)
		defer cancel()
		resp, err := cfg.Sender.SendTransaction(ctx, res.Destination, res.TxnId, body)
		var te *TxnError
		switch {
		case err == nil:
			res.Outcome = pb.FedQueueResult_SENT
			logPDUResults(log, res.Destination, res.TxnId, resp)
		case errors.As(err, &te) && !te.Retry:
			res.Outcome, res.Error = pb.FedQueueResult_DROP, err.Error()
		default:
			res.Outcome, res.Error = pb.FedQueueResult_RETRY, err.Error()
		}
		router.Send(res)
	}()
}

// logPDUResults logs the PDUs the destination refused: the spec leaves
// them to the sender's judgement, and sending them again would not change
// the answer.
func logPDUResults(log *slog.Logger, dest, txnID string, resp []byte) {
	var r struct {
		PDUs map[string]struct {
			Error string `json:"error"`
		} `json:"pdus"`
	}
	if json.Unmarshal(resp, &r) != nil {
		return
	}
	n := 0
	for id, res := range r.PDUs {
		if res.Error == "" {
			continue
		}
		if n++; n > maxTxnPDUs {
			break
		}
		log.Info("fedqueue: destination refused a PDU", slog.String("destination", dest), slog.String("txn", txnID),
			slog.String("event_id", id), slog.String("error", res.Error))
	}
}

func (a *fedQueue) result(m *pb.FedQueueResult) {
	if !a.inFlight || m.Attempt != a.attempt {
		return
	}
	a.inFlight = false
	if a.meta.Batch == nil || a.meta.Batch.TxnID != m.TxnId {
		a.pump()
		return
	}
	now := a.env.Now()
	var err error
	switch m.Outcome {
	case pb.FedQueueResult_SENT, pb.FedQueueResult_DROP:
		if m.Outcome == pb.FedQueueResult_DROP {
			a.env.Log.Warn("fedqueue: destination refused a transaction, dropping it", slog.String("destination", a.dest),
				slog.String("txn", m.TxnId), slog.Int("pdus", len(a.meta.Batch.PDUs)), slog.Int("edus", len(a.meta.Batch.EDUs)),
				slog.String("err", m.Error))
			a.stat(false)
		} else {
			a.stat(true)
		}
		batch := a.meta.Batch
		err = a.update(func(tx *bbolt.Tx, next *storage.FedQueueMeta) error {
			if err := storage.DeleteFedQueueItems(tx, a.env.Identity, next, batch.PDUs, batch.EDUs); err != nil {
				return err
			}
			next.Batch, next.Failures, next.RetryAtMS = nil, 0, 0
			return a.makeBatch(tx, next, now)
		})
	default:
		a.stat(false)
		failures := a.meta.Failures + 1
		wait := FedBackoff(a.cfg.BackoffBase, a.cfg.BackoffMax, failures)
		a.env.Log.Info("fedqueue: transaction failed, retrying later", slog.String("destination", a.dest),
			slog.String("txn", m.TxnId), slog.Int("failures", failures), slog.Duration("wait", wait), slog.String("err", m.Error))
		err = a.update(func(_ *bbolt.Tx, next *storage.FedQueueMeta) error {
			next.Failures, next.RetryAtMS = failures, now.Add(wait).UnixMilli()
			return nil
		})
	}
	if err != nil {
		a.env.Log.Error("fedqueue: store a transaction's outcome", slog.String("destination", a.dest), slog.Any("err", err))
		a.armTimer(a.cfg.BackoffBase)
		return
	}
	a.pump()
}

func (a *fedQueue) stat(sent bool) {
	if a.cfg.Stats == nil {
		return
	}
	if sent {
		a.cfg.Stats.Sent.Add(1)
	} else {
		a.cfg.Stats.Failed.Add(1)
	}
}

// armTimer wakes the queue after d, through the router so that the wake
// reaches the queue wherever it lives by then.
func (a *fedQueue) armTimer(d time.Duration) {
	if a.timer != nil {
		a.timer.Stop()
	}
	router, dest := a.env.Router, a.dest
	a.timer = time.AfterFunc(d, func() { router.Send(&pb.FedQueueWake{Destination: dest}) })
}

// FedBackoff is the wait before the next attempt after failures
// consecutive failures: base doubled per failure after the first, capped
// at max, plus up to a quarter of it at random so that queues that failed
// together do not retry together.
func FedBackoff(base, max time.Duration, failures int) time.Duration {
	d := base
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return d + rand.N(d/4+1)
}

// WakeFedQueues sends FedQueueWake to every queue that has something
// stored in the partitions store holds, and returns how many it woke. The
// node calls it when it starts (queues are actors like any other: nothing
// activates them after a restart) and now and then after, for the
// partitions it received from another node.
func WakeFedQueues(store *storage.Store, router Router) (int, error) {
	n := 0
	var errs []error
	for _, id := range store.Partitions() {
		p, ok := store.Partition(id)
		if !ok {
			continue
		}
		var pending []string
		if err := p.View(func(tx *bbolt.Tx) error {
			var err error
			pending, err = storage.FedQueuesPending(tx, pb.KindFedQueue+"/")
			return err
		}); err != nil {
			errs = append(errs, fmt.Errorf("fedqueue: partition %d: %w", id, err))
			continue
		}
		for _, identity := range pending {
			router.Send(&pb.FedQueueWake{Destination: strings.TrimPrefix(identity, pb.KindFedQueue+"/")})
			n++
		}
	}
	return n, errors.Join(errs...)
}
