package actors

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/shoal-chat/shoal/actors/pb"
)

// Kinds maps each identity prefix to the constructor of its actor kind.
// The partition hosts (package cluster) activate actors through it.
// The server actors (pb.KindServer) are not in it: they need the node's
// federation client, so NewServerKind binds them to it and the gateway
// adds them when it starts a node.
func Kinds() map[string]func(env *Env) actor.Actor {
	return map[string]func(env *Env) actor.Actor{
		pb.KindRoom:       NewRoom,
		pb.KindUser:       NewUser,
		pb.KindDevice:     NewDevice,
		pb.KindAlias:      NewAlias,
		pb.KindDirectory:  NewDirectory,
		pb.KindCerts:      NewCerts,
		pb.KindUserDir:    NewUserDir,
		pb.KindMedia:      NewMedia,
		pb.KindEventIndex: NewEventIndex,
		pb.KindFedTxn:     NewFedTxn,
	}
}
