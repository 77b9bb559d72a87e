// Package actors holds shoal's virtual actors — room, user, device, alias,
// directory, user directory (userdir), media, the certificate store (certs)
// and, for federation, a remote server's keys (server), its outbound queue
// (fedqueue), the transactions it sent us (fedtxn) and the event index
// (eventidx) — and the rules by which they keep their state.
//
// A room is also where federation's graph work happens (room_fed*.go):
// events from other servers are checked against their auth events, the
// state before them and the current state, forks are resolved, and the
// state after every event is kept as state groups; the network side of it
// is the gateway's.
//
// Each actor is the single writer of its own state. It is activated on its
// first message by its partition's host (package cluster), loads its state
// from its partition's bbolt file, persists every change in one transaction
// before it replies, and passivates when idle. Actors talk only by the
// protobuf messages of package pb, through the Router interface defined
// here and implemented by package cluster, so they never know on which node
// another actor lives.
package actors
