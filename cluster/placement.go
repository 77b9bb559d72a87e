package cluster

import (
	"crypto/sha256"
	"encoding/binary"
)

// Placement maps partitions to the nodes that own them by rendezvous
// (highest random weight) hashing: each member scores each partition with a
// hash of (member, partition) and the highest score owns it. Every node
// computes the same map from the same set of members, with no coordination.
//
// When a member joins it takes, from every other member, exactly the
// partitions on which it now scores highest (about 1/n of them); when one
// leaves, only its partitions move, each to its second-highest scorer. The
// hash is SHA-256, like PartitionOf: node IDs are random, but a strong hash
// keeps the spread even for any set of IDs and leaves nothing to game.

// placementScore is member's score for partition p.
func placementScore(member string, p uint32) uint64 {
	h := sha256.New()
	h.Write([]byte("shoal placement\x00"))
	h.Write([]byte(member))
	var b [5]byte
	binary.BigEndian.PutUint32(b[1:], p)
	h.Write(b[:])
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}

// ownerOf returns the member owning partition p, or "" when there are no
// members. Ties (a 2^-64 chance) go to the smaller node ID.
func ownerOf(p uint32, members []string) string {
	best, bestScore := "", uint64(0)
	for _, m := range members {
		s := placementScore(m, p)
		if best == "" || s > bestScore || (s == bestScore && m < best) {
			best, bestScore = m, s
		}
	}
	return best
}

// placement returns the owner of each of count partitions.
func placement(count uint32, members []string) []string {
	owners := make([]string, count)
	for p := range owners {
		owners[p] = ownerOf(uint32(p), members)
	}
	return owners
}
