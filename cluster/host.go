package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster/clusterpb"
	"github.com/shoal-chat/shoal/storage"
)

// Producer makes the actor for one identity of a kind.
type Producer = func(env *actors.Env) actor.Actor

// hostState is where a partition stands on this node.
type hostState uint8

const (
	// hostAbsent: no copy here. Requests are forwarded to where the
	// partition went, held if it is expected here, refused otherwise.
	hostAbsent hostState = iota
	// hostServing: this node holds the partition and runs its actors.
	hostServing
	// hostDraining: its actors are stopping before a handoff.
	hostDraining
	// hostSending: sealed, the copy is on its way to the new owner.
	hostSending
	// hostSealed: sealed, and whether the receiver got it is being found out.
	hostSealed
	// hostReceiving: a copy is arriving from its previous owner.
	hostReceiving
)

func (s hostState) String() string {
	switch s {
	case hostServing:
		return "serving"
	case hostDraining:
		return "draining"
	case hostSending:
		return "sending"
	case hostSealed:
		return "sealed"
	case hostReceiving:
		return "receiving"
	}
	return "absent"
}

// holds reports whether the node has a copy of the partition in this state.
func (s hostState) holds() bool {
	return s == hostServing || s == hostDraining || s == hostSending || s == hostSealed
}

// hostReport is what a host publishes for routing and status.
type hostReport struct {
	state hostState
	epoch uint64
}

// maxHeld bounds the requests one host holds while its partition moves.
const maxHeld = 10000

// host is the actor owning one partition on this node. Every node runs one
// host per partition, whether it holds the partition or not. The host is the
// only place that spawns the partition's actors, which gives the
// single-activation guarantee on a node: an identity has at most one live
// actor, and a new activation starts only after the previous one has fully
// stopped. Across nodes the guarantee comes from the partition file: only a
// host holding the unsealed file serves (see handoff.go).
type host struct {
	partition uint32
	node      *Node
	self      *actor.PID

	state hostState
	store *storage.Partition // the copy held here, if any
	epoch uint64             // the epoch the actors write under while serving

	children map[string]*actor.PID    // identity → live activation
	names    map[string]string        // child PID id → identity
	depths   map[string]*mailboxDepth // child PID id → its mailbox counter
	// stopping holds messages for identities whose previous activation is
	// still stopping; they are delivered to the next activation.
	stopping map[string][]pendingMessage

	// held are requests waiting for the partition: it is moving, or
	// expected here.
	held       []pendingMessage
	tickArmed  bool
	report     atomic.Pointer[hostReport]
	notBefore  time.Time // no new handoff out before this (after a failure)
	drainStart time.Time // when the handoff in progress began
	// lastHandoff is how long the last handoff out took, from the moment
	// requests started waiting to the new owner's "serving" (nanoseconds).
	lastHandoff atomic.Int64
	target      string // node ID the partition is being handed to
	sealEpoch   uint64
	movedTo     string // actor transport address the partition went to
	movedEpoch  uint64
	cancel      context.CancelFunc // of the transfer or resolution in flight

	in          *incoming // transfer arriving here
	refusedUpTo uint64    // transfers of this epoch or older are refused
}

type pendingMessage struct {
	msg    any
	sender *actor.PID
	at     time.Time
}

// Messages a host sends itself.
type (
	startHandoff struct{ to *clusterpb.Member }
	handoffDone  struct {
		epoch uint64
		held  bool // the receiver holds the partition
		err   error
	}
	expireTick struct{}
)

func newHost(n *Node, p uint32) *host {
	h := &host{partition: p, node: n, children: map[string]*actor.PID{}, names: map[string]string{}, depths: map[string]*mailboxDepth{},
		stopping: map[string][]pendingMessage{}}
	h.publish()
	return h
}

func (h *host) publish() {
	h.report.Store(&hostReport{state: h.state, epoch: h.epochNow()})
}

func (h *host) epochNow() uint64 {
	switch {
	case h.store != nil:
		return h.store.Epoch()
	case h.in != nil:
		return h.in.epoch
	case h.movedTo != "":
		return h.movedEpoch
	}
	return 0
}

func (h *host) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		h.self = ctx.Self()
		if h.state == hostSealed {
			h.resolve(ctx)
		}
	case *actor.Stopping:
		if h.cancel != nil {
			h.cancel()
		}
		h.abortIncoming()
		for _, p := range h.held {
			h.unavailable(ctx, p.sender, "node stopping", true)
		}
		h.held = nil
	case *pb.Passivate:
		h.passivate(ctx, m.Identity)
	case *actor.Terminated:
		h.terminated(ctx, m.Who)
	case *startHandoff:
		h.beginHandoff(ctx, m.to)
	case *handoffDone:
		h.handoffDone(ctx, m)
	case *expireTick:
		h.expire(ctx)
	case *clusterpb.HandoffBegin:
		ctx.Respond(h.receiveBegin(m))
	case *clusterpb.HandoffChunk:
		ctx.Respond(h.receiveChunk(m))
	case *clusterpb.HandoffBlob:
		ctx.Respond(h.receiveBlob(m))
	case *clusterpb.HandoffCommit:
		ctx.Respond(h.receiveCommit(ctx, m))
	case *clusterpb.HandoffQuery:
		ctx.Respond(h.query(m))
	case pb.Targeted:
		h.route(ctx, m, ctx.Sender())
	}
}

// route delivers, holds, forwards or refuses one request.
func (h *host) route(ctx actor.Context, msg pb.Targeted, sender *actor.PID) {
	switch h.state {
	case hostServing:
		h.deliver(ctx, msg, sender)
	case hostDraining, hostSending, hostSealed, hostReceiving:
		h.hold(ctx, msg, sender)
	default:
		switch {
		case h.movedTo != "":
			// It went there; whoever sent this had not heard yet.
			h.forward(ctx, actor.NewPID(h.movedTo, hostName(h.partition)), msg, sender)
		case h.node.expects(h.partition):
			h.hold(ctx, msg, sender)
		default:
			h.unavailable(ctx, sender, "partition not held by this node", true)
		}
	}
}

func (h *host) deliver(ctx actor.Context, msg pb.Targeted, sender *actor.PID) {
	id := msg.ActorIdentity()
	if buf, ok := h.stopping[id]; ok {
		h.stopping[id] = append(buf, pendingMessage{msg: msg, sender: sender})
		return
	}
	pid, err := h.activate(ctx, id)
	if err != nil {
		if sender != nil {
			ctx.Send(sender, actors.ToPB(err))
		}
		return
	}
	ctx.RequestWithCustomSender(pid, msg, sender)
}

func (h *host) forward(ctx actor.Context, to *actor.PID, msg any, sender *actor.PID) {
	if sender == nil {
		ctx.Send(to, msg)
		return
	}
	ctx.RequestWithCustomSender(to, msg, sender)
}

// hold keeps a request until the partition is served here or has gone,
// for at most the configured hold time.
func (h *host) hold(ctx actor.Context, msg any, sender *actor.PID) {
	if len(h.held) >= maxHeld {
		h.unavailable(ctx, sender, "too many requests waiting for a partition in flight", false)
		return
	}
	h.held = append(h.held, pendingMessage{msg: msg, sender: sender, at: time.Now()})
	h.armTick()
}

func (h *host) armTick() {
	if h.tickArmed || len(h.held) == 0 {
		return
	}
	h.tickArmed = true
	system, self := h.node.system, h.self
	time.AfterFunc(h.node.holdFor()/4+time.Millisecond, func() { system.Root.Send(self, &expireTick{}) })
}

// expire answers the requests held longer than the hold time.
func (h *host) expire(ctx actor.Context) {
	h.tickArmed = false
	cutoff := time.Now().Add(-h.node.holdFor())
	kept := h.held[:0]
	for _, p := range h.held {
		if p.at.After(cutoff) {
			kept = append(kept, p)
			continue
		}
		h.unavailable(ctx, p.sender, "partition in flight or its node unreachable", false)
	}
	clear(h.held[len(kept):])
	h.held = kept
	h.armTick()
}

// release replays the held requests: delivered here when serving,
// forwarded when the partition has gone.
func (h *host) release(ctx actor.Context) {
	held := h.held
	h.held = nil
	for _, p := range held {
		msg, ok := p.msg.(pb.Targeted)
		if !ok {
			continue
		}
		h.route(ctx, msg, p.sender)
	}
}

func (h *host) unavailable(ctx actor.Context, sender *actor.PID, reason string, retry bool) {
	if sender == nil {
		return
	}
	ctx.Send(sender, &clusterpb.Unavailable{Partition: h.partition, Reason: reason,
		RetryAfterMs: uint32(retryAfter / time.Millisecond), Retry: retry})
}

func (h *host) activate(ctx actor.Context, id string) (*actor.PID, error) {
	if pid, ok := h.children[id]; ok {
		return pid, nil
	}
	kind, _, ok := cutKind(id)
	if !ok {
		return nil, actors.Errorf(http.StatusBadRequest, "M_INVALID_PARAM", "malformed actor identity")
	}
	produce, ok := h.node.kinds[kind]
	if !ok {
		return nil, actors.Errorf(http.StatusNotFound, "M_UNRECOGNIZED", "no actor kind %q", kind)
	}
	env := &actors.Env{
		Identity:    id,
		Partition:   h.store.At(h.epoch),
		Router:      h.node,
		Server:      h.node.server,
		Log:         h.node.log.With(slog.String("actor", id)),
		Now:         h.node.cfg.Now,
		IdleTimeout: h.node.cfg.IdleTimeout,
	}
	depth := &mailboxDepth{total: &h.node.metrics.queued}
	props := actor.PropsFromProducer(func() actor.Actor { return &guarded{inner: produce(env)} },
		actor.WithMailbox(actor.Unbounded(depth)))
	pid, err := ctx.SpawnNamed(props, id)
	if err != nil {
		return nil, fmt.Errorf("cluster: spawn %s: %w", id, err)
	}
	h.children[id] = pid
	h.names[pid.Id] = id
	h.depths[pid.Id] = depth
	h.node.metrics.activations.Add(1)
	return pid, nil
}

// passivate stops an idle actor. Messages already in its mailbox are
// processed first (Poison is an ordinary message); messages arriving from
// now on wait in h.stopping until it has terminated.
func (h *host) passivate(ctx actor.Context, id string) {
	pid, ok := h.children[id]
	if !ok || (ctx.Sender() != nil && ctx.Sender().Id != pid.Id) {
		return
	}
	delete(h.children, id)
	h.stopping[id] = nil
	ctx.Poison(pid)
}

func (h *host) terminated(ctx actor.Context, who *actor.PID) {
	id, ok := h.names[who.Id]
	if !ok {
		return
	}
	delete(h.names, who.Id)
	h.node.metrics.activations.Add(-1)
	if d, ok := h.depths[who.Id]; ok {
		delete(h.depths, who.Id)
		d.discard()
	}
	if cur, ok := h.children[id]; ok && cur.Id == who.Id {
		// Stopped without passivating (supervision gave up after repeated
		// panics): the next message activates it afresh from storage.
		delete(h.children, id)
	}
	buf, ok := h.stopping[id]
	if ok {
		delete(h.stopping, id)
	}
	if h.state != hostServing {
		// Draining for a handoff: what waited for this activation waits
		// for the partition's next home.
		for _, p := range buf {
			p.at = time.Now()
			h.held = append(h.held, p)
		}
		h.armTick()
		h.drained(ctx)
		return
	}
	if len(buf) == 0 {
		return
	}
	pid, err := h.activate(ctx, id)
	for _, p := range buf {
		if err != nil {
			if p.sender != nil {
				ctx.Send(p.sender, actors.ToPB(err))
			}
			continue
		}
		ctx.RequestWithCustomSender(pid, p.msg, p.sender)
	}
}

// serve makes the host serve the copy it holds and replays what waited.
func (h *host) serve(ctx actor.Context, part *storage.Partition) {
	h.store = part
	h.epoch = part.Epoch()
	h.state = hostServing
	h.movedTo, h.movedEpoch = "", 0
	h.target = ""
	h.publish()
	h.release(ctx)
}

// --- handing the partition over (this node is the old owner) ---

// beginHandoff stops the partition's actors so that the partition can move
// to its new owner; requests wait meanwhile.
func (h *host) beginHandoff(ctx actor.Context, to *clusterpb.Member) {
	if h.state != hostServing || time.Now().Before(h.notBefore) {
		return
	}
	h.state = hostDraining
	h.drainStart = time.Now()
	h.target = to.NodeId
	for id, pid := range h.children {
		delete(h.children, id)
		if _, ok := h.stopping[id]; !ok {
			h.stopping[id] = nil
		}
		ctx.Poison(pid)
	}
	h.publish()
	h.drained(ctx)
}

// drained continues a handoff once every actor of the partition has
// stopped: it seals the partition at the next epoch and starts sending it.
func (h *host) drained(ctx actor.Context) {
	if h.state != hostDraining || len(h.names) > 0 {
		return
	}
	// The cluster may have changed while the actors stopped.
	to := h.node.handoffTarget(h.partition)
	if to == nil {
		h.serve(ctx, h.store)
		return
	}
	h.target = to.NodeId
	next := h.store.Epoch() + 1
	if err := h.store.Seal(next, sealNote(to.NodeId)); err != nil {
		h.node.log.Error("cluster: seal partition for handoff", slog.Int("partition", int(h.partition)), slog.Any("err", err))
		h.notBefore = time.Now().Add(handoffBackoff)
		h.serve(ctx, h.store)
		return
	}
	h.sealEpoch = next
	h.state = hostSending
	h.publish()
	tctx, cancel := context.WithCancel(h.node.ctx)
	h.cancel = cancel
	part, p, self, system := h.store, h.partition, h.self, h.node.system
	go func() {
		held, err := h.node.sendPartition(tctx, p, part, next, to)
		system.Root.Send(self, &handoffDone{epoch: next, held: held, err: err})
	}()
}

func (h *host) handoffDone(ctx actor.Context, m *handoffDone) {
	if (h.state != hostSending && h.state != hostSealed) || m.epoch != h.sealEpoch {
		return
	}
	if h.cancel != nil {
		h.cancel()
		h.cancel = nil
	}
	to := h.target
	if m.held {
		// The new owner serves it: this copy is history.
		if err := h.node.store.Drop(h.partition); err != nil {
			h.node.log.Error("cluster: drop handed-off partition", slog.Int("partition", int(h.partition)), slog.Any("err", err))
		}
		h.store = nil
		h.state = hostAbsent
		h.movedTo, h.movedEpoch = h.node.rpcAddrOf(to), m.epoch
		h.target = ""
		took := time.Since(h.drainStart)
		h.lastHandoff.Store(int64(took))
		h.publish()
		h.node.log.Info("cluster: partition handed over", slog.Int("partition", int(h.partition)),
			slog.String("to", to), slog.Uint64("epoch", m.epoch), slog.Duration("took", took))
		h.release(ctx)
		return
	}
	if m.err != nil && h.state == hostSending {
		h.node.log.Warn("cluster: handoff interrupted; asking the receiver whether it got the partition",
			slog.Int("partition", int(h.partition)), slog.String("to", to), slog.Any("err", m.err))
	}
	if m.err == nil {
		// The receiver answered for certain that it does not hold it and
		// never will under this epoch: serve again.
		if err := h.store.Unseal(); err != nil {
			h.node.log.Error("cluster: unseal partition", slog.Int("partition", int(h.partition)), slog.Any("err", err))
			h.state = hostSealed
			h.publish()
			return
		}
		h.notBefore = time.Now().Add(handoffBackoff)
		h.serve(ctx, h.store)
		return
	}
	h.state = hostSealed
	h.publish()
	h.resolve(ctx)
}

// resolve asks the receiver of an interrupted transfer, until it answers,
// whether it holds the partition; until then nobody serves it.
func (h *host) resolve(ctx actor.Context) {
	if h.state != hostSealed {
		return
	}
	rctx, cancel := context.WithCancel(h.node.ctx)
	h.cancel = cancel
	p, epoch, to, self, system := h.partition, h.sealEpoch, h.target, h.self, h.node.system
	go func() {
		held, err := h.node.resolveHandoff(rctx, p, epoch, to)
		if rctx.Err() != nil {
			return
		}
		system.Root.Send(self, &handoffDone{epoch: epoch, held: held, err: err})
	}()
}

// --- receiving a partition (this node is the new owner) ---

// incoming is a transfer arriving at this host.
type incoming struct {
	epoch uint64
	from  string
	path  string // the partition file being received
	file  *os.File
	hash  hash.Hash
	size  uint64
	start time.Time

	blobDir string  // where media blobs are received
	blob    *blobIn // the blob being received
	blobs   uint32  // blobs received whole
	bytes   uint64  // everything received
}

// blobIn is a media blob being received.
type blobIn struct {
	sum  string
	path string
	file *os.File
	hash hash.Hash
	size uint64
}

func (h *host) receiveBegin(m *clusterpb.HandoffBegin) *clusterpb.HandoffAck {
	if h.state.holds() {
		return &clusterpb.HandoffAck{Held: true, Epoch: h.store.Epoch()}
	}
	if m.Epoch <= h.refusedUpTo {
		return &clusterpb.HandoffAck{Error: fmt.Sprintf("transfers up to epoch %d were called off", h.refusedUpTo)}
	}
	if h.in != nil {
		if h.in.epoch > m.Epoch {
			return &clusterpb.HandoffAck{Error: fmt.Sprintf("a transfer at epoch %d is under way", h.in.epoch)}
		}
		h.abortIncoming()
	}
	dir := filepath.Join(h.node.store.Dir(), "partitions", "incoming")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return &clusterpb.HandoffAck{Error: err.Error()}
	}
	path := filepath.Join(dir, fmt.Sprintf("p-%04d.%d", h.partition, m.Epoch))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return &clusterpb.HandoffAck{Error: err.Error()}
	}
	h.in = &incoming{epoch: m.Epoch, from: m.FromNode, path: path, file: f, hash: sha256.New(), start: time.Now(),
		blobDir: path + ".media"}
	h.state = hostReceiving
	h.node.trackIncoming(h.partition, m.FromNode, m.Epoch, 0)
	h.publish()
	return &clusterpb.HandoffAck{Ok: true}
}

func (h *host) receiveChunk(m *clusterpb.HandoffChunk) *clusterpb.HandoffAck {
	if h.in == nil || h.in.epoch != m.Epoch {
		return &clusterpb.HandoffAck{Error: "no transfer under way at this epoch"}
	}
	if m.Offset != h.in.size {
		h.abortIncoming()
		return &clusterpb.HandoffAck{Error: fmt.Sprintf("chunk at offset %d, expected %d", m.Offset, h.in.size)}
	}
	if _, err := h.in.file.Write(m.Data); err != nil {
		h.abortIncoming()
		return &clusterpb.HandoffAck{Error: err.Error()}
	}
	h.in.hash.Write(m.Data)
	h.in.size += uint64(len(m.Data))
	h.in.bytes += uint64(len(m.Data))
	h.node.trackIncoming(h.partition, h.in.from, h.in.epoch, h.in.bytes)
	return &clusterpb.HandoffAck{Ok: true}
}

// receiveBlob writes the next piece of a media blob and, on its last
// piece, checks that its content has the SHA-256 it is named by.
func (h *host) receiveBlob(m *clusterpb.HandoffBlob) *clusterpb.HandoffAck {
	in := h.in
	if in == nil || in.epoch != m.Epoch {
		return &clusterpb.HandoffAck{Error: "no transfer under way at this epoch"}
	}
	fail := func(err error) *clusterpb.HandoffAck {
		h.abortIncoming()
		return &clusterpb.HandoffAck{Error: err.Error()}
	}
	if !storage.ValidBlobSum(m.Sha256) {
		return fail(fmt.Errorf("bad blob name %q", m.Sha256))
	}
	b := in.blob
	if b == nil {
		if m.Offset != 0 {
			return fail(fmt.Errorf("blob %s starts at offset %d", m.Sha256, m.Offset))
		}
		dir := filepath.Join(in.blobDir, m.Sha256[:2])
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fail(err)
		}
		path := filepath.Join(dir, m.Sha256)
		f, err := os.OpenFile(path+".part", os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return fail(err)
		}
		b = &blobIn{sum: m.Sha256, path: path, file: f, hash: sha256.New()}
		in.blob = b
	}
	if b.sum != m.Sha256 || m.Offset != b.size {
		return fail(fmt.Errorf("blob %s at offset %d, expected blob %s at %d", m.Sha256, m.Offset, b.sum, b.size))
	}
	if _, err := b.file.Write(m.Data); err != nil {
		return fail(err)
	}
	b.hash.Write(m.Data)
	b.size += uint64(len(m.Data))
	in.bytes += uint64(len(m.Data))
	h.node.trackIncoming(h.partition, in.from, in.epoch, in.bytes)
	if !m.Last {
		return &clusterpb.HandoffAck{Ok: true}
	}
	if hex.EncodeToString(b.hash.Sum(nil)) != b.sum {
		return fail(fmt.Errorf("blob %s arrived with another SHA-256", b.sum))
	}
	if err := b.file.Sync(); err != nil {
		return fail(err)
	}
	err := b.file.Close()
	b.file = nil
	if err != nil {
		return fail(err)
	}
	if err := os.Rename(b.path+".part", b.path); err != nil {
		return fail(err)
	}
	in.blob = nil
	in.blobs++
	return &clusterpb.HandoffAck{Ok: true}
}

// receiveCommit checks the whole file, installs it and serves the partition
// before it answers: once the sender hears "ok", the partition is here.
func (h *host) receiveCommit(ctx actor.Context, m *clusterpb.HandoffCommit) *clusterpb.HandoffAck {
	if h.state.holds() {
		return &clusterpb.HandoffAck{Held: true, Epoch: h.store.Epoch()}
	}
	in := h.in
	if in == nil || in.epoch != m.Epoch {
		return &clusterpb.HandoffAck{Error: "no transfer under way at this epoch"}
	}
	fail := func(err error) *clusterpb.HandoffAck {
		h.node.log.Warn("cluster: incoming partition refused", slog.Int("partition", int(h.partition)), slog.Any("err", err))
		h.abortIncoming()
		return &clusterpb.HandoffAck{Error: err.Error()}
	}
	if in.size != m.Size {
		return fail(fmt.Errorf("received %d bytes, sender sent %d", in.size, m.Size))
	}
	if sum := in.hash.Sum(nil); string(sum) != string(m.Sha256) {
		return fail(errors.New("SHA-256 of the received file does not match the sender's"))
	}
	if in.blob != nil || in.blobs != m.Blobs {
		return fail(fmt.Errorf("received %d whole media blobs, sender sent %d", in.blobs, m.Blobs))
	}
	if err := in.file.Sync(); err != nil {
		return fail(err)
	}
	if err := in.file.Close(); err != nil {
		return fail(err)
	}
	in.file = nil
	// Blobs first: a partition served here must find every blob its
	// records name.
	if err := h.node.store.InstallBlobs(h.partition, in.blobDir); err != nil {
		return fail(err)
	}
	part, err := h.node.store.Install(h.partition, in.path)
	if err != nil {
		return fail(err)
	}
	if err := part.Unseal(); err != nil {
		// Installed but still sealed: the copy is here and nobody
		// serves it until a restart unseals it.
		h.node.log.Error("cluster: unseal received partition", slog.Int("partition", int(h.partition)), slog.Any("err", err))
	}
	h.abortIncoming() // the file has moved; this forgets the transfer
	h.node.log.Info("cluster: partition received", slog.Int("partition", int(h.partition)), slog.String("from", in.from),
		slog.Uint64("epoch", part.Epoch()), slog.Uint64("bytes", in.bytes), slog.Int("blobs", int(in.blobs)),
		slog.Duration("took", time.Since(in.start)))
	h.serve(ctx, part)
	return &clusterpb.HandoffAck{Ok: true, Held: true, Epoch: part.Epoch()}
}

// query answers the sender of an interrupted transfer. "Not held" is final:
// transfers at that epoch are refused from now on, so the sender may serve
// the partition again.
func (h *host) query(m *clusterpb.HandoffQuery) *clusterpb.HandoffAck {
	switch {
	case h.state.holds():
		return &clusterpb.HandoffAck{Ok: true, Held: true, Epoch: h.store.Epoch()}
	case h.movedTo != "" && h.movedEpoch >= m.Epoch:
		return &clusterpb.HandoffAck{Ok: true, Held: true, Epoch: h.movedEpoch}
	}
	h.refusedUpTo = max(h.refusedUpTo, m.Epoch)
	if h.in != nil && h.in.epoch <= m.Epoch {
		h.abortIncoming()
	}
	return &clusterpb.HandoffAck{Ok: true}
}

func (h *host) abortIncoming() {
	if h.in == nil {
		return
	}
	if h.in.file != nil {
		_ = h.in.file.Close()
	}
	if h.in.blob != nil && h.in.blob.file != nil {
		_ = h.in.blob.file.Close()
	}
	_ = os.Remove(h.in.path)
	_ = os.RemoveAll(h.in.blobDir)
	h.node.untrackIncoming(h.partition)
	h.in = nil
	if h.state == hostReceiving {
		h.state = hostAbsent
	}
	h.publish()
}

// sealNote records in a sealed file where it was going.
func sealNote(to string) []byte { return []byte("handoff to=" + to) }

// sealTarget reads the node a sealed file was going to.
func sealTarget(note []byte) string {
	to, _ := strings.CutPrefix(string(note), "handoff to=")
	return to
}

// guarded turns a panic while handling a request into an error reply before
// letting the supervisor restart the actor, which reloads its state from
// storage: the caller gets an answer and no half-applied in-memory state
// survives.
type guarded struct{ inner actor.Actor }

func (g *guarded) Receive(ctx actor.Context) {
	defer func() {
		if r := recover(); r != nil {
			if ctx.Sender() != nil {
				ctx.Respond(actors.ToPB(actors.ErrUnknown("internal error")))
			}
			ctx.Logger().Error("actor panicked", slog.Any("panic", r), slog.String("actor", ctx.Self().Id))
			panic(r)
		}
	}()
	g.inner.Receive(ctx)
}

func cutKind(identity string) (kind, rest string, ok bool) {
	for i := 0; i < len(identity); i++ {
		if identity[i] == '/' {
			return identity[:i], identity[i+1:], i > 0 && i+1 < len(identity)
		}
	}
	return "", "", false
}

func hostName(p uint32) string { return fmt.Sprintf("partition-%d", p) }

// mailboxDepth counts the messages waiting in one activation's mailbox and
// keeps the node's total (the shoal_actor_mailbox_depth metric) in step.
// Its hooks run on the mailbox's goroutines, hence the atomics.
type mailboxDepth struct {
	own   atomic.Int64
	total *atomic.Int64
}

func (d *mailboxDepth) MailboxStarted()     {}
func (d *mailboxDepth) MailboxEmpty()       {}
func (d *mailboxDepth) MessagePosted(any)   { d.own.Add(1); d.total.Add(1) }
func (d *mailboxDepth) MessageReceived(any) { d.own.Add(-1); d.total.Add(-1) }

// discard removes what a stopped activation left unprocessed from the total.
func (d *mailboxDepth) discard() { d.total.Add(-d.own.Swap(0)) }
