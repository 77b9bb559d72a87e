// Package cluster places shoal's virtual actors: it maps every actor identity
// to a partition, every partition to the node that owns it, and runs on each
// node one host actor per owned partition that activates actors on their
// first message and stops them when they go idle.
//
// A one-node cluster is the default: every partition is local. Membership by
// gossip (hashicorp/memberlist), remote delivery and partition handoff extend
// the same Node behind the same actors.Router interface.
package cluster
