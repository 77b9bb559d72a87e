package actors

import (
	"crypto/ed25519"
	"log/slog"
	"time"

	"github.com/shoal-chat/shoal/storage"
)

// ServerIdentity is what the whole cluster signs and names itself with.
type ServerIdentity struct {
	ServerName string
	KeyID      string // e.g. "ed25519:a_1b2c"
	PrivateKey ed25519.PrivateKey
}

// Env is what an actor is given when it is activated: its identity, its
// partition's store, a way to reach other actors and the server identity.
type Env struct {
	Identity string
	// Partition is fenced at the epoch under which this node holds the
	// partition (storage.Partition.At): once the partition has moved on,
	// the actor's writes fail and nothing of them lands.
	Partition *storage.Partition
	Router    Router
	Server    *ServerIdentity
	Log       *slog.Logger
	Now       func() time.Time
	// IdleTimeout is how long an actor may receive nothing before it
	// passivates.
	IdleTimeout time.Duration
}

// NowMillis is the current time in Matrix's milliseconds.
func (e *Env) NowMillis() int64 { return e.Now().UnixMilli() }
