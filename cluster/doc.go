// Package cluster places shoal's virtual actors on the nodes of a cluster and
// moves them with their data.
//
// Every actor identity maps to one of a fixed number of partitions
// (storage.PartitionOf); every partition belongs to one member, chosen by
// rendezvous hashing over the roster (placement.go), so every node computes
// the same map from the same roster. Each node runs one host actor per
// partition: the host of a partition this node holds activates actors on
// their first message and stops them when idle, never two activations of one
// identity at a time; the other hosts forward, hold or refuse (host.go).
// Node implements actors.Router: Request and Send go to the local host when
// this node holds the partition, else to the owner's host over Proto.Actor's
// gRPC remote with mutual TLS (transport.go, security.go), and *pb.Error
// replies come back as MatrixErrors.
//
// Membership is hashicorp/memberlist gossip, encrypted with a key derived
// from the cluster secret (membership.go). The roster — who owns partitions —
// is not memberlist's liveness view: a node stays a member while it is down,
// so that its partitions wait for it (503 M_UNAVAILABLE with Retry-After)
// instead of being recreated empty elsewhere; only a graceful leave takes a
// node out. Each node keeps the roster, its node ID and its cluster's ID in
// its data dir (state.go), and a joining node receives the cluster's shared
// files (signing key, registration secret) in the join.
//
// When the owner of a partition changes, its holder hands it over: it stops
// the partition's actors, seals the file at the next epoch, streams it with
// its media blobs to the new owner, which checks and installs them before it
// serves (handoff.go). Requests for the partition wait at the old or the new
// host meanwhile, bounded by ClusterConfig.HoldFor. Status reports members,
// placement, epochs and transfers (status.go).
//
// Without ClusterConfig a node is a one-node cluster holding every
// partition, with no gossip and no transport.
package cluster
