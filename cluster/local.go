package cluster

import "github.com/shoal-chat/shoal/storage"

// Local reports whether the actor of identity runs on this node right now,
// so a caller may use the actor's files directly (the gateway's media fast
// path) instead of streaming them over the cluster transport. A partition
// may move right after: whoever relies on the answer must cope with the
// actor no longer finding what it was handed.
func (n *Node) Local(identity string) bool {
	p := storage.PartitionOf(identity, n.cfg.Partitions)
	pid, _, err := n.route(p)
	return err == nil && pid == n.hosts[p]
}
