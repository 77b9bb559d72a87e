package cluster

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// Producer makes the actor for one identity of a kind.
type Producer = func(env *actors.Env) actor.Actor

// host is the actor owning one partition on this node. It is the only place
// that spawns the partition's actors, which gives the single-activation
// guarantee: an identity has at most one live actor, and a new activation
// starts only after the previous one has fully stopped.
type host struct {
	partition uint32
	store     *storage.Partition
	node      *Node

	children map[string]*actor.PID // identity → live activation
	names    map[string]string     // child PID id → identity
	// stopping holds messages for identities whose previous activation is
	// still stopping; they are delivered to the next activation.
	stopping map[string][]pendingMessage
}

type pendingMessage struct {
	msg    any
	sender *actor.PID
}

func (h *host) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *pb.Passivate:
		h.passivate(ctx, m.Identity)
	case *actor.Terminated:
		h.terminated(ctx, m.Who)
	case pb.Targeted:
		id := m.ActorIdentity()
		if buf, ok := h.stopping[id]; ok {
			h.stopping[id] = append(buf, pendingMessage{msg: m, sender: ctx.Sender()})
			return
		}
		pid, err := h.activate(ctx, id)
		if err != nil {
			h.refuse(ctx, err)
			return
		}
		ctx.Forward(pid)
	}
}

func (h *host) refuse(ctx actor.Context, err error) {
	if ctx.Sender() != nil {
		ctx.Respond(actors.ToPB(err))
	}
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
		Partition:   h.store,
		Router:      h.node,
		Server:      h.node.cfg.Server,
		Log:         h.node.log.With(slog.String("actor", id)),
		Now:         h.node.cfg.Now,
		IdleTimeout: h.node.cfg.IdleTimeout,
	}
	props := actor.PropsFromProducer(func() actor.Actor { return &guarded{inner: produce(env)} })
	pid, err := ctx.SpawnNamed(props, id)
	if err != nil {
		return nil, fmt.Errorf("cluster: spawn %s: %w", id, err)
	}
	h.children[id] = pid
	h.names[pid.Id] = id
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
	if cur, ok := h.children[id]; ok && cur.Id == who.Id {
		// Stopped without passivating (supervision gave up after repeated
		// panics): the next message activates it afresh from storage.
		delete(h.children, id)
	}
	buf, ok := h.stopping[id]
	if !ok {
		return
	}
	delete(h.stopping, id)
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
