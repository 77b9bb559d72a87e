package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// aliasActor owns one room alias (identity alias/<#alias:server>): which
// room it points to and who created it. One actor per alias makes "create
// unless taken" a single writer's decision, with no lock anywhere.
type aliasActor struct {
	env     *Env
	alias   string
	loaded  bool
	has     bool
	mapping storage.AliasMapping
}

// NewAlias makes the actor of one room alias.
func NewAlias(env *Env) actor.Actor {
	return &aliasActor{env: env, alias: strings.TrimPrefix(env.Identity, pb.KindAlias+"/")}
}

func (a *aliasActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if a.env.IdleTimeout > 0 {
			ctx.SetReceiveTimeout(a.env.IdleTimeout)
		}
	case *actor.ReceiveTimeout:
		ctx.Send(ctx.Parent(), &pb.Passivate{Identity: a.env.Identity})
	case *pb.AliasOp:
		res, err := a.op(m)
		if a.loaded && !a.has {
			// Unused aliases keep no activation around.
			ctx.Send(ctx.Parent(), &pb.Passivate{Identity: a.env.Identity})
		}
		if ctx.Sender() == nil {
			return
		}
		if err != nil {
			var me *MatrixError
			if !errors.As(err, &me) {
				a.env.Log.Error("alias: request failed", slog.Any("err", err))
			}
			ctx.Respond(ToPB(err))
			return
		}
		ctx.Respond(res)
	}
}

func (a *aliasActor) load() error {
	if a.loaded {
		return nil
	}
	err := a.env.Partition.View(func(tx *bbolt.Tx) error {
		m, ok, err := storage.AliasMappingOf(tx, a.env.Identity)
		a.mapping, a.has = m, ok
		return err
	})
	if err != nil {
		return fmt.Errorf("alias %s: load: %w", a.alias, err)
	}
	a.loaded = true
	return nil
}

// op handles get, set and delete. delete is allowed to the alias's creator
// and to callers the gateway vouches for (admin: a server admin, or a user
// with the room's power to change its canonical alias).
func (a *aliasActor) op(m *pb.AliasOp) (*pb.AliasReply, error) {
	if err := a.load(); err != nil {
		return nil, err
	}
	notFound := ErrNotFound("room alias %s not found", a.alias)
	switch m.Op {
	case "get":
		if !a.has {
			return nil, notFound
		}
		return a.reply(), nil
	case "set":
		if m.RoomId == "" {
			return nil, ErrInvalidParam("room_id is required")
		}
		if a.has {
			return nil, Errorf(http.StatusConflict, "M_UNKNOWN", "room alias %s already exists", a.alias)
		}
		mp := storage.AliasMapping{RoomID: m.RoomId, Creator: m.UserId, Servers: []string{a.env.Server.ServerName}}
		identity := a.env.Identity
		if err := a.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
			return storage.PutAliasMapping(tx, identity, mp)
		}); err != nil {
			return nil, fmt.Errorf("alias %s: store: %w", a.alias, err)
		}
		a.mapping, a.has = mp, true
		return a.reply(), nil
	case "delete":
		if !a.has {
			return nil, notFound
		}
		if m.RoomId != "" && m.RoomId != a.mapping.RoomID {
			return nil, notFound
		}
		if !m.Admin && m.UserId != a.mapping.Creator {
			return nil, ErrForbidden("only the alias's creator, a room moderator or a server admin may remove it")
		}
		rep := a.reply()
		identity := a.env.Identity
		if err := a.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
			return storage.DeleteAliasMapping(tx, identity)
		}); err != nil {
			return nil, fmt.Errorf("alias %s: delete: %w", a.alias, err)
		}
		a.mapping, a.has = storage.AliasMapping{}, false
		return rep, nil
	}
	return nil, ErrInvalidParam("unknown alias operation %q", m.Op)
}

func (a *aliasActor) reply() *pb.AliasReply {
	servers := a.mapping.Servers
	if len(servers) == 0 {
		servers = []string{a.env.Server.ServerName}
	}
	return &pb.AliasReply{RoomId: a.mapping.RoomID, Servers: servers, Creator: a.mapping.Creator}
}
