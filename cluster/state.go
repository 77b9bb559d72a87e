package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/shoal-chat/shoal/cluster/clusterpb"
)

// Files a clustered node keeps in its data dir.
const (
	nodeIDFile       = "node_id"      // this node's ID, made at first start
	clusterStateFile = "cluster.json" // the cluster this node belongs to
)

// loadOrCreateNodeID returns the node's ID, creating it at first start. The
// ID names the node in the roster and in placement, so it must survive
// restarts: a node that comes back under its ID gets its partitions back.
func loadOrCreateNodeID(dir string) (string, error) {
	path := filepath.Join(dir, nodeIDFile)
	data, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(data))
		if !validNodeID(id) {
			return "", fmt.Errorf("cluster: %s: not a node ID", path)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("cluster: read node ID: %w", err)
	}
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("cluster: make node ID: %w", err)
	}
	id := hex.EncodeToString(b)
	if err := writeFileAtomic(path, []byte(id+"\n")); err != nil {
		return "", fmt.Errorf("cluster: write node ID: %w", err)
	}
	return id, nil
}

func validNodeID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// savedState is cluster.json: which cluster this data dir belongs to, this
// node's last incarnation and the roster as last known, so that a node
// restarting while others are down still knows every member and computes
// the same placement.
type savedState struct {
	ClusterName string        `json:"cluster_name"`
	ClusterID   string        `json:"cluster_id"`
	Incarnation uint64        `json:"incarnation"`
	Roster      []savedMember `json:"roster"`
}

type savedMember struct {
	NodeID      string `json:"node_id"`
	GossipAddr  string `json:"gossip_addr"`
	RPCAddr     string `json:"rpc_addr"`
	Status      string `json:"status"`
	Incarnation uint64 `json:"incarnation"`
}

// loadState reads cluster.json; nil when the data dir belongs to no
// cluster yet.
func loadState(dir string) (*savedState, error) {
	data, err := os.ReadFile(filepath.Join(dir, clusterStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: read %s: %w", clusterStateFile, err)
	}
	var s savedState
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("cluster: %s: %w", clusterStateFile, err)
	}
	if s.ClusterID == "" {
		return nil, fmt.Errorf("cluster: %s: no cluster ID", clusterStateFile)
	}
	return &s, nil
}

func saveState(dir string, s *savedState) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("cluster: encode %s: %w", clusterStateFile, err)
	}
	if err := writeFileAtomic(filepath.Join(dir, clusterStateFile), append(data, '\n')); err != nil {
		return fmt.Errorf("cluster: write %s: %w", clusterStateFile, err)
	}
	return nil
}

func statusName(s clusterpb.MemberStatus) string {
	switch s {
	case clusterpb.MemberStatus_MEMBER:
		return "member"
	case clusterpb.MemberStatus_LEAVING:
		return "leaving"
	case clusterpb.MemberStatus_LEFT:
		return "left"
	case clusterpb.MemberStatus_JOINING:
		return "joining"
	}
	return "unknown"
}

func parseStatus(s string) clusterpb.MemberStatus {
	switch s {
	case "member":
		return clusterpb.MemberStatus_MEMBER
	case "leaving":
		return clusterpb.MemberStatus_LEAVING
	case "left":
		return clusterpb.MemberStatus_LEFT
	case "joining":
		return clusterpb.MemberStatus_JOINING
	}
	return clusterpb.MemberStatus_MEMBER_STATUS_UNSPECIFIED
}

func toSaved(m *clusterpb.Member) savedMember {
	return savedMember{NodeID: m.NodeId, GossipAddr: m.GossipAddr, RPCAddr: m.RpcAddr,
		Status: statusName(m.Status), Incarnation: m.Incarnation}
}

func fromSaved(m savedMember) *clusterpb.Member {
	return &clusterpb.Member{NodeId: m.NodeID, GossipAddr: m.GossipAddr, RpcAddr: m.RPCAddr,
		Status: parseStatus(m.Status), Incarnation: m.Incarnation}
}

// writeFileAtomic writes data to path through a synced temporary file and a
// rename, then syncs the directory.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	return d.Sync()
}
