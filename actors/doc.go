// Package actors holds shoal's virtual actors — room, user, device, alias,
// directory, user directory (userdir), media, remote server keys (server)
// and the certificate store (certs) — and the rules by which they keep
// their state.
//
// Each actor is the single writer of its own state. It is activated on its
// first message by its partition's host (package cluster), loads its state
// from its partition's bbolt file, persists every change in one transaction
// before it replies, and passivates when idle. Actors talk only by the
// protobuf messages of package pb, through the Router interface defined
// here and implemented by package cluster, so they never know on which node
// another actor lives.
package actors
