package actors

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// maxIndexAddIDs bounds the event IDs of one EventIndexAdd (a room commits
// far fewer at once; more means a bug or a forged message).
const maxIndexAddIDs = 10000

// eventIndexActor is one shard of the event index (identity
// eventidx/<shard>): event ID → room ID for the event IDs hashing to the
// shard (pb.EventIndexShard). Rooms tell it what they store; the gateway
// asks it where an event lives when a request names only the event
// (GET /_matrix/federation/v1/event/{eventId}). It keeps nothing in memory:
// every answer comes from the store, so nothing is lost on passivation.
type eventIndexActor struct {
	env   *Env
	shard string
}

// NewEventIndex makes the actor of one event index shard.
func NewEventIndex(env *Env) actor.Actor {
	return &eventIndexActor{env: env, shard: strings.TrimPrefix(env.Identity, pb.KindEventIndex+"/")}
}

func (a *eventIndexActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if a.env.IdleTimeout > 0 {
			ctx.SetReceiveTimeout(a.env.IdleTimeout)
		}
	case *actor.ReceiveTimeout:
		ctx.Send(ctx.Parent(), &pb.Passivate{Identity: a.env.Identity})
	case *pb.EventIndexAdd:
		err := a.add(m)
		if err != nil {
			a.env.Log.Warn("eventidx: add", slog.String("shard", a.shard), slog.String("room", m.RoomId), slog.Any("err", err))
		}
		// Fire-and-forget, but a caller that asks (a test, a room that
		// wants to know the index has it) gets an acknowledgement once the
		// entries are durable.
		if ctx.Sender() != nil {
			if err != nil {
				ctx.Respond(ToPB(err))
			} else {
				ctx.Respond(&pb.EventIndexReply{RoomId: m.RoomId})
			}
		}
	case *pb.EventIndexLookup:
		room, err := a.lookup(m.EventId)
		if ctx.Sender() == nil {
			return
		}
		if err != nil {
			a.env.Log.Error("eventidx: lookup", slog.String("shard", a.shard), slog.Any("err", err))
			ctx.Respond(ToPB(err))
			return
		}
		ctx.Respond(&pb.EventIndexReply{RoomId: room})
	}
}

// add stores the IDs of m that belong to this shard and are of a valid
// length; the others are skipped (a sender that got the shard wrong must
// not make the index answer for events it will never be asked about).
func (a *eventIndexActor) add(m *pb.EventIndexAdd) error {
	if m.RoomId == "" || len(m.RoomId) > storage.MaxIndexedIDBytes {
		return fmt.Errorf("room ID of %d bytes", len(m.RoomId))
	}
	if len(m.EventIds) > maxIndexAddIDs {
		return fmt.Errorf("%d event IDs in one add, over %d", len(m.EventIds), maxIndexAddIDs)
	}
	ids := make([]string, 0, len(m.EventIds))
	for _, id := range m.EventIds {
		if id == "" || len(id) > storage.MaxIndexedIDBytes || pb.EventIndexShard(id) != a.shard {
			continue
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil
	}
	identity, room := a.env.Identity, m.RoomId
	if err := a.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		return storage.PutEventIndex(tx, identity, room, ids)
	}); err != nil {
		return fmt.Errorf("eventidx %s: store: %w", a.shard, err)
	}
	return nil
}

// lookup returns the room holding eventID ("" when the index does not know
// it).
func (a *eventIndexActor) lookup(eventID string) (string, error) {
	var room string
	err := a.env.Partition.View(func(tx *bbolt.Tx) error {
		var err error
		room, _, err = storage.EventIndexRoom(tx, a.env.Identity, eventID)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("eventidx %s: load: %w", a.shard, err)
	}
	return room, nil
}
