// Package clusterpb holds the protobuf messages the nodes of a shoal cluster
// exchange among themselves (gossip state, partition handoff, status),
// generated from cluster.proto by `make proto`. The actors' messages are in
// actors/pb.
package clusterpb
