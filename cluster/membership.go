package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/cluster/clusterpb"
)

// ClusterConfig makes a node a member of a multi-node cluster.
type ClusterConfig struct {
	// Name is the cluster's name: nodes of another name are refused.
	Name string
	// Secret authenticates and encrypts everything between nodes (see
	// security.go); every node of a cluster has the same one.
	Secret string
	// Listen is the gossip (memberlist) address, host:port, UDP and TCP.
	Listen string
	// RPCListen is the actor transport's address; empty means the gossip
	// host and the gossip port + 1.
	RPCListen string
	// Advertise is the host other nodes reach this one at, when it listens
	// on every interface or behind NAT; empty means the listen host.
	Advertise string
	// Join lists gossip addresses of existing members. Empty on the node
	// that founds the cluster; a node that has been a member rejoins through
	// the members it knows.
	Join []string
	// HoldFor bounds how long a request waits for a partition that is
	// moving; after it the request gets 503 M_UNAVAILABLE. Default 10 s.
	HoldFor time.Duration
	// MaxHandoffs is how many partitions one node hands over at a time.
	// Default 2.
	MaxHandoffs int

	// tune adjusts memberlist's timing (tests).
	tune func(*memberlist.Config)
}

// view is an immutable picture of the cluster that routing reads without
// locks: the roster, who is alive, and the owner of each partition.
type view struct {
	self    string
	owners  []string
	members map[string]*clusterpb.Member
	alive   map[string]bool
}

// memberTarget returns the member a partition held here should move to, or
// nil when it should stay (this node owns it, or its owner cannot take it
// now).
func (v *view) handoffTarget(p uint32) *clusterpb.Member {
	owner := v.owners[p]
	if owner == "" || owner == v.self || !v.alive[owner] {
		return nil
	}
	m := v.members[owner]
	if m == nil || m.Status != clusterpb.MemberStatus_MEMBER || m.RpcAddr == "" {
		return nil
	}
	return m
}

// membership is this node's part in the cluster: memberlist for liveness and
// gossip, the roster for placement. It implements memberlist's delegates.
type membership struct {
	cfg        ClusterConfig
	log        *slog.Logger
	dir        string
	nodeID     string
	serverName string
	partitions uint32
	changed    func()           // called (without locks held) after the view changed
	lost       func(rpc string) // called (without locks held) when a node stops being reachable
	back       func(rpc string) // called (without locks held) when a node becomes reachable

	ml *memberlist.Memberlist

	saveMu sync.Mutex // serialises writes of cluster.json

	mu        sync.Mutex
	clusterID string
	self      *clusterpb.Member
	roster    map[string]*clusterpb.Member
	alive     map[string]bool
	// shared are the files handed to joining nodes; nil until this node
	// has them.
	shared []*clusterpb.SharedFile
	// received are the shared files a join brought in.
	received []*clusterpb.SharedFile
	// refused is the latest reason a peer was refused, for the join error.
	refused error
	dirty   bool // roster changed since last saved
	ready   bool // this node runs its partition hosts

	view atomic.Pointer[view]
}

// newMembership sets up this node's roster: the saved one, with this node a
// member (or, for a node joining for the first time, joining).
func newMembership(cfg ClusterConfig, dir, nodeID, serverName string, partitions uint32, saved *savedState, log *slog.Logger) *membership {
	m := &membership{
		cfg: cfg, log: log, dir: dir, nodeID: nodeID, serverName: serverName, partitions: partitions,
		roster: map[string]*clusterpb.Member{},
		alive:  map[string]bool{nodeID: true},
	}
	var inc uint64
	if saved != nil {
		m.clusterID = saved.ClusterID
		inc = saved.Incarnation
		for _, sm := range saved.Roster {
			mb := fromSaved(sm)
			if validNodeID(mb.NodeId) && mb.NodeId != nodeID {
				m.roster[mb.NodeId] = mb
			}
		}
	}
	// A (re)started node is a member, under a new incarnation that
	// supersedes whatever the others remember of it. A new node joins first
	// and owns partitions only once it runs (setReady).
	status := clusterpb.MemberStatus_MEMBER
	if saved == nil && len(cfg.Join) > 0 {
		status = clusterpb.MemberStatus_JOINING
	}
	m.self = &clusterpb.Member{NodeId: nodeID, Status: status, Incarnation: inc + 1}
	m.roster[nodeID] = m.self
	m.dirty = true
	m.rebuildLocked()
	return m
}

// start creates the memberlist instance; rpcAddr is where this node's actor
// transport listens.
func (m *membership) start(rpcAddr string) error {
	key, err := gossipKey(m.cfg.Secret)
	if err != nil {
		return err
	}
	host, port, err := splitHostPort(m.cfg.Listen)
	if err != nil {
		return fmt.Errorf("cluster: cluster listen address: %w", err)
	}
	c := memberlist.DefaultLANConfig()
	c.Name = m.nodeID
	c.BindAddr = host
	c.BindPort = port
	if m.cfg.Advertise != "" {
		c.AdvertiseAddr = m.cfg.Advertise
		c.AdvertisePort = port
	}
	keyring, err := memberlist.NewKeyring(nil, key)
	if err != nil {
		return fmt.Errorf("cluster: gossip keyring: %w", err)
	}
	c.Keyring = keyring
	c.GossipVerifyIncoming = true
	c.GossipVerifyOutgoing = true
	c.Delegate = m
	c.Events = m
	c.Merge = m
	c.Alive = m
	c.Conflict = m
	c.PushPullInterval = 10 * time.Second
	// A small cluster has few peers to confirm a suspicion, which keeps a
	// dead node suspected for up to SuspicionMaxTimeoutMult times the
	// base timeout (4 s): cap it at twice, so a crash is noticed in
	// seconds, not half a minute.
	c.SuspicionMaxTimeoutMult = 2
	// A node that restarts on another address may take its name back once
	// the old address is known dead.
	c.DeadNodeReclaimTime = 5 * time.Second
	c.Logger = log.New(&memberlistLog{log: m.log}, "", 0)
	if m.cfg.tune != nil {
		m.cfg.tune(c)
	}
	m.mu.Lock()
	m.self.RpcAddr = rpcAddr
	m.mu.Unlock()
	ml, err := memberlist.Create(c)
	if err != nil {
		return fmt.Errorf("cluster: start gossip on %s: %w", m.cfg.Listen, err)
	}
	m.ml = ml
	m.mu.Lock()
	// The gossip address is known only now: a new incarnation carries it,
	// so that no peer keeps the entry made before it.
	m.self.GossipAddr = ml.LocalNode().Address()
	m.self.Incarnation++
	m.dirty = true
	m.rebuildLocked()
	m.mu.Unlock()
	return m.announce()
}

// announce gossips this node's current meta data (its roster entry).
func (m *membership) announce() error {
	if err := m.ml.UpdateNode(2 * time.Second); err != nil {
		return fmt.Errorf("cluster: announce: %w", err)
	}
	return nil
}

// join contacts addrs; it succeeds when at least one of them let this node in.
func (m *membership) join(addrs []string) error {
	n, err := m.ml.Join(addrs)
	if n > 0 {
		return nil
	}
	m.mu.Lock()
	refused := m.refused
	m.mu.Unlock()
	if refused != nil {
		return fmt.Errorf("cluster: join %s: %w", strings.Join(addrs, ","), refused)
	}
	if err != nil && strings.Contains(err.Error(), "no installed keys could decrypt") {
		return fmt.Errorf("cluster: join %s: the nodes there do not have this node's cluster secret", strings.Join(addrs, ","))
	}
	return fmt.Errorf("cluster: join %s: %w", strings.Join(addrs, ","), err)
}

// setStatus changes this node's roster entry and gossips it.
func (m *membership) setStatus(s clusterpb.MemberStatus) error {
	m.mu.Lock()
	m.self.Status = s
	m.self.Incarnation++
	m.dirty = true
	m.rebuildLocked()
	m.mu.Unlock()
	m.changed()
	if err := m.save(); err != nil {
		return err
	}
	return m.announce()
}

func (m *membership) status() clusterpb.MemberStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.self.Status
}

func (m *membership) refusedErr() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.refused
}

func (m *membership) selfEntry() *clusterpb.Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	return proto.Clone(m.self).(*clusterpb.Member)
}

func (m *membership) id() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.clusterID
}

// setClusterID records the cluster this node founded or joined.
func (m *membership) setClusterID(id string) {
	m.mu.Lock()
	m.clusterID = id
	m.dirty = true
	m.mu.Unlock()
}

// setShared records the files to hand to joining nodes.
func (m *membership) setShared(files []*clusterpb.SharedFile) {
	m.mu.Lock()
	m.shared = files
	m.mu.Unlock()
}

func (m *membership) receivedFiles() []*clusterpb.SharedFile {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.received
}

// save writes cluster.json if the roster changed since it was last written.
func (m *membership) save() error {
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	m.mu.Lock()
	if !m.dirty || m.clusterID == "" {
		m.mu.Unlock()
		return nil
	}
	s := &savedState{ClusterName: m.cfg.Name, ClusterID: m.clusterID, Incarnation: m.self.Incarnation}
	for _, id := range slices.Sorted(maps.Keys(m.roster)) {
		s.Roster = append(s.Roster, toSaved(m.roster[id]))
	}
	m.dirty = false
	m.mu.Unlock()
	if err := saveState(m.dir, s); err != nil {
		m.mu.Lock()
		m.dirty = true
		m.mu.Unlock()
		return err
	}
	return nil
}

// unreachable returns the gossip addresses of members memberlist does not
// see alive, for rejoining them.
func (m *membership) unreachable() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for id, mb := range m.roster {
		if id != m.nodeID && !m.alive[id] && mb.Status != clusterpb.MemberStatus_LEFT && mb.GossipAddr != "" {
			out = append(out, mb.GossipAddr)
		}
	}
	slices.Sort(out)
	return out
}

func (m *membership) stop(leave bool) {
	if m.ml == nil {
		return
	}
	if leave {
		if err := m.ml.Leave(time.Second); err != nil {
			m.log.Debug("cluster: gossip leave", slog.Any("err", err))
		}
	}
	if err := m.ml.Shutdown(); err != nil {
		m.log.Warn("cluster: stop gossip", slog.Any("err", err))
	}
}

// merge takes in a roster entry; it reports whether the roster changed. m.mu
// must be held.
func (m *membership) mergeLocked(in *clusterpb.Member) bool {
	if in == nil || !validNodeID(in.NodeId) {
		return false
	}
	if in.NodeId == m.nodeID {
		// Someone remembers a later incarnation of this node (its
		// cluster.json was lost or restored from a backup): supersede it.
		if in.Incarnation >= m.self.Incarnation && !proto.Equal(in, m.self) {
			m.self.Incarnation = in.Incarnation + 1
			m.dirty = true
			go func() {
				if err := m.announce(); err != nil {
					m.log.Warn("cluster: announce", slog.Any("err", err))
				}
			}()
		}
		return false
	}
	cur := m.roster[in.NodeId]
	if cur != nil && !supersedes(in, cur) {
		return false
	}
	if cur != nil && proto.Equal(cur, in) {
		return false
	}
	m.roster[in.NodeId] = proto.Clone(in).(*clusterpb.Member)
	m.dirty = true
	return true
}

// supersedes reports whether roster entry a replaces b (same node).
func supersedes(a, b *clusterpb.Member) bool {
	if a.Incarnation != b.Incarnation {
		return a.Incarnation > b.Incarnation
	}
	return statusRank(a.Status) > statusRank(b.Status)
}

// statusRank orders statuses by how late in a node's life they come.
func statusRank(s clusterpb.MemberStatus) int {
	switch s {
	case clusterpb.MemberStatus_JOINING:
		return 1
	case clusterpb.MemberStatus_MEMBER:
		return 2
	case clusterpb.MemberStatus_LEAVING:
		return 3
	case clusterpb.MemberStatus_LEFT:
		return 4
	}
	return 0
}

// rebuildLocked publishes a new view. m.mu must be held.
func (m *membership) rebuildLocked() {
	v := &view{self: m.nodeID, members: map[string]*clusterpb.Member{}, alive: map[string]bool{}}
	var owners []string
	for id, mb := range m.roster {
		v.members[id] = proto.Clone(mb).(*clusterpb.Member)
		if mb.Status == clusterpb.MemberStatus_MEMBER {
			owners = append(owners, id)
		}
	}
	for id, a := range m.alive {
		v.alive[id] = a
	}
	v.alive[m.nodeID] = true
	v.owners = placement(m.partitions, owners)
	m.view.Store(v)
}

// compatible checks a peer's meta data against this node's settings.
func (m *membership) compatible(name string, meta []byte) (*clusterpb.NodeMeta, error) {
	var nm clusterpb.NodeMeta
	if err := proto.Unmarshal(meta, &nm); err != nil || nm.Self == nil {
		return nil, fmt.Errorf("node %s is not a shoal node", name)
	}
	if nm.Self.NodeId != name {
		return nil, fmt.Errorf("node %s announces itself as %s", name, nm.Self.NodeId)
	}
	if nm.ClusterName != m.cfg.Name {
		return nil, fmt.Errorf("node %s is in cluster %q, this node in cluster %q", name, nm.ClusterName, m.cfg.Name)
	}
	if nm.ServerName != m.serverName {
		return nil, fmt.Errorf("node %s serves server name %q, this node %q: every node of a cluster serves one server name", name, nm.ServerName, m.serverName)
	}
	if nm.Partitions != m.partitions {
		return nil, fmt.Errorf("node %s's cluster has %d partitions, this node is configured with %d: the count is fixed when a cluster is created", name, nm.Partitions, m.partitions)
	}
	m.mu.Lock()
	ours := m.clusterID
	m.mu.Unlock()
	if ours != "" && nm.ClusterId != "" && ours != nm.ClusterId {
		return nil, fmt.Errorf("node %s belongs to cluster ID %s, this node's data dir to cluster ID %s: a data dir only ever joins the cluster it was made in", name, nm.ClusterId, ours)
	}
	return &nm, nil
}

// --- memberlist.Delegate ---

func (m *membership) NodeMeta(limit int) []byte {
	m.mu.Lock()
	nm := &clusterpb.NodeMeta{ClusterName: m.cfg.Name, ClusterId: m.clusterID, ServerName: m.serverName,
		Partitions: m.partitions, Self: proto.Clone(m.self).(*clusterpb.Member), Ready: m.ready}
	m.mu.Unlock()
	b, err := proto.Marshal(nm)
	if err != nil || len(b) > limit {
		m.log.Error("cluster: node meta data does not fit", slog.Int("bytes", len(b)), slog.Any("err", err))
		return nil
	}
	return b
}

func (m *membership) NotifyMsg([]byte) {}

func (m *membership) GetBroadcasts(overhead, limit int) [][]byte { return nil }

func (m *membership) LocalState(join bool) []byte {
	m.mu.Lock()
	st := &clusterpb.GossipState{ClusterId: m.clusterID}
	for _, id := range slices.Sorted(maps.Keys(m.roster)) {
		st.Roster = append(st.Roster, m.roster[id])
	}
	if join {
		st.Files = m.shared
	}
	b, err := proto.Marshal(st)
	m.mu.Unlock()
	if err != nil {
		m.log.Error("cluster: encode gossip state", slog.Any("err", err))
		return nil
	}
	return b
}

func (m *membership) MergeRemoteState(buf []byte, join bool) {
	var st clusterpb.GossipState
	if err := proto.Unmarshal(buf, &st); err != nil {
		m.log.Warn("cluster: undecodable gossip state", slog.Any("err", err))
		return
	}
	m.mu.Lock()
	if st.ClusterId == "" || (m.clusterID != "" && st.ClusterId != m.clusterID) {
		// A node that has not joined yet has nothing to teach; a node of
		// another cluster was refused by NotifyMerge/NotifyAlive already.
		m.mu.Unlock()
		return
	}
	if m.clusterID == "" {
		m.clusterID = st.ClusterId
		m.dirty = true
	}
	if join && len(st.Files) > 0 && m.received == nil {
		m.received = st.Files
	}
	changed := false
	for _, mb := range st.Roster {
		changed = m.mergeLocked(mb) || changed
	}
	if changed {
		m.rebuildLocked()
	}
	m.mu.Unlock()
	if changed {
		m.changed()
	}
}

// --- memberlist.MergeDelegate and AliveDelegate ---

func (m *membership) NotifyMerge(peers []*memberlist.Node) error {
	for _, p := range peers {
		if p.Name == m.nodeID {
			continue
		}
		if _, err := m.compatible(p.Name, p.Meta); err != nil {
			m.mu.Lock()
			m.refused = err
			m.mu.Unlock()
			return err
		}
	}
	return nil
}

func (m *membership) NotifyAlive(peer *memberlist.Node) error {
	if peer.Name == m.nodeID {
		return nil
	}
	_, err := m.compatible(peer.Name, peer.Meta)
	return err
}

// --- memberlist.ConflictDelegate ---

func (m *membership) NotifyConflict(existing, other *memberlist.Node) {
	m.log.Warn("cluster: two nodes claim one node ID", slog.String("node", existing.Name),
		slog.String("known_at", existing.Address()), slog.String("claimed_by", other.Address()))
}

// --- memberlist.EventDelegate ---

func (m *membership) NotifyJoin(n *memberlist.Node)   { m.nodeEvent(n, true) }
func (m *membership) NotifyUpdate(n *memberlist.Node) { m.nodeEvent(n, true) }
func (m *membership) NotifyLeave(n *memberlist.Node)  { m.nodeEvent(n, false) }

// nodeEvent takes in what memberlist learnt about a node. A node counts as
// alive (is sent requests and partitions) once memberlist sees it alive and
// it says it is ready.
func (m *membership) nodeEvent(n *memberlist.Node, alive bool) {
	if n.Name == m.nodeID {
		return
	}
	nm, err := m.compatible(n.Name, n.Meta)
	if err != nil {
		return
	}
	alive = alive && nm.Ready
	m.mu.Lock()
	changed := m.mergeLocked(nm.Self)
	was := m.alive[n.Name]
	if was != alive {
		m.alive[n.Name] = alive
		changed = true
	}
	if changed {
		m.rebuildLocked()
	}
	rpc := nm.Self.RpcAddr
	m.mu.Unlock()
	if was && !alive && rpc != "" {
		m.lost(rpc)
	}
	if !was && alive && rpc != "" {
		m.back(rpc)
	}
	if changed {
		m.changed()
	}
}

// setReady announces that this node runs its partition hosts: a joining
// node becomes a member.
func (m *membership) setReady() error {
	m.mu.Lock()
	m.ready = true
	if m.self.Status == clusterpb.MemberStatus_JOINING {
		m.self.Status = clusterpb.MemberStatus_MEMBER
		m.self.Incarnation++
		m.dirty = true
		m.rebuildLocked()
	}
	m.mu.Unlock()
	m.changed()
	if err := m.save(); err != nil {
		return err
	}
	return m.announce()
}

// writeSharedFiles installs the shared files a join brought in. A file this
// node already has must be identical: two signing keys would make two
// servers.
func writeSharedFiles(dir string, files []*clusterpb.SharedFile, names []string) error {
	for _, f := range files {
		if !slices.Contains(names, f.Name) {
			return fmt.Errorf("cluster: a peer sent unexpected file %q", f.Name)
		}
		path := filepath.Join(dir, f.Name)
		have, err := os.ReadFile(path)
		if err == nil {
			if !bytes.Equal(have, f.Data) {
				return fmt.Errorf("cluster: %s differs from the cluster's: this data dir belongs to another cluster", path)
			}
			continue
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("cluster: read %s: %w", path, err)
		}
		if err := writeFileAtomic(path, f.Data); err != nil {
			return fmt.Errorf("cluster: write %s: %w", path, err)
		}
	}
	return nil
}

// readSharedFiles reads the files handed to joining nodes; absent files are
// left out (a node configured with its own registration secret has none).
func readSharedFiles(dir string, names []string) ([]*clusterpb.SharedFile, error) {
	var out []*clusterpb.SharedFile
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("cluster: read %s: %w", name, err)
		}
		out = append(out, &clusterpb.SharedFile{Name: name, Data: data})
	}
	return out, nil
}

func splitHostPort(addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", addr)
	}
	return host, port, nil
}

// memberlistLog turns memberlist's "[LEVEL] memberlist: ..." lines into
// structured log records.
type memberlistLog struct{ log *slog.Logger }

func (w *memberlistLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo,
		"[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			line, level = strings.TrimSpace(rest), l
			break
		}
	}
	w.log.Log(context.Background(), level, line, slog.String("lib", "memberlist"))
	return len(p), nil
}

var _ io.Writer = (*memberlistLog)(nil)
