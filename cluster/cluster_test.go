package cluster

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/hashicorp/memberlist"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// These tests run several nodes in one process on loopback: real memberlist
// gossip, the real gRPC transport with mutual TLS, real bbolt files.

const testSecret = "a test cluster secret"

// skipUnderRace: every Proto.Actor remote started in a process writes
// grpc-go's global logger (grpclog.SetLoggerV2 in remote.Start) while the
// gRPC servers of the nodes started before it read it, which the race
// detector reports however the nodes are started. One node per process —
// what shoal runs — does not have this race: the multi-process tests in
// cmd/shoal run race-enabled binaries, and `make test` runs these tests
// without -race.
func skipUnderRace(t *testing.T) {
	t.Helper()
	if raceEnabled {
		t.Skip("several actor transports in one process race on grpc-go's global logger; run without -race (make test does)")
	}
}

// tracker counts live activations of each identity across every node of a
// test cluster, and fails the test on a second one.
type tracker struct {
	t    testing.TB
	mu   sync.Mutex
	live map[string]int
}

func newTracker(t testing.TB) *tracker { return &tracker{t: t, live: map[string]int{}} }

func (tr *tracker) started(id string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.live[id]++
	if tr.live[id] > 1 {
		tr.t.Errorf("two live activations of %s", id)
	}
}

func (tr *tracker) stopped(id string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.live[id]--
}

// clusterCounter persists a counter per identity: AccountUpdate increments
// and answers the new value, RoomNotice increments without an answer,
// AccountQuery answers the value.
type clusterCounter struct {
	env   *actors.Env
	tr    *tracker
	value uint64
}

func (c *clusterCounter) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		c.tr.started(c.env.Identity)
		_ = c.env.Partition.View(func(tx *bbolt.Tx) error {
			if b := tx.Bucket([]byte(c.env.Identity)); b != nil {
				if v := b.Get([]byte("n")); v != nil {
					c.value = binary.BigEndian.Uint64(v)
				}
			}
			return nil
		})
	case *actor.Stopped:
		c.tr.stopped(c.env.Identity)
	case *pb.AccountUpdate:
		if err := c.incr(); err != nil {
			ctx.Respond(actors.ToPB(err))
			return
		}
		ctx.Respond(&pb.AccountUpdateReply{Json: []byte(fmt.Sprint(c.value))})
	case *pb.RoomNotice:
		_ = c.incr()
	case *pb.AccountQuery:
		if m.Kind == "fail" {
			ctx.Respond(actors.ToPB(actors.ErrForbidden("no %s", m.Key)))
			return
		}
		ctx.Respond(&pb.AccountQueryReply{Json: []byte(fmt.Sprint(c.value)), Found: true})
	}
}

func (c *clusterCounter) incr() error {
	next := c.value + 1
	err := c.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(c.env.Identity))
		if err != nil {
			return err
		}
		return b.Put([]byte("n"), binary.BigEndian.AppendUint64(nil, next))
	})
	if err != nil {
		return err
	}
	c.value = next
	return nil
}

type testCluster struct {
	t     testing.TB
	tr    *tracker
	parts uint32
	// mu guards nodes against the load goroutines' reads (live) while the
	// test adds or drops nodes.
	mu    sync.Mutex
	nodes []*Node
	dirs  []string
	// log and tune replace the default logger and the fast gossip timing
	// (benchmarks: quiet, and LAN timing that a saturated CPU does not
	// mistake for failures).
	log  *slog.Logger
	tune func(*memberlist.Config)
}

// fastGossip makes memberlist notice joins and failures within about a
// second on loopback.
func fastGossip(c *memberlist.Config) {
	c.ProbeInterval = 200 * time.Millisecond
	c.ProbeTimeout = 100 * time.Millisecond
	c.GossipInterval = 50 * time.Millisecond
	c.PushPullInterval = time.Second
	c.SuspicionMult = 2
	c.TCPTimeout = time.Second
	c.DeadNodeReclaimTime = time.Second
}

type nodeOpts struct {
	name       string // cluster name
	server     string
	secret     string
	partitions uint32
}

func (tc *testCluster) config(dir string, join []string, o nodeOpts) Config {
	if o.name == "" {
		o.name = "test"
	}
	if o.server == "" {
		o.server = "cluster.test"
	}
	if o.secret == "" {
		o.secret = testSecret
	}
	if o.partitions == 0 {
		o.partitions = tc.parts
	}
	tune := fastGossip
	if tc.tune != nil {
		tune = tc.tune
	}
	return Config{
		Log:         tc.log,
		DataDir:     dir,
		Partitions:  o.partitions,
		ServerName:  o.server,
		SharedFiles: []string{"server.seed"},
		IdleTimeout: time.Minute,
		Kinds: map[string]Producer{
			pb.KindUser: func(env *actors.Env) actor.Actor { return &clusterCounter{env: env, tr: tc.tr} },
		},
		Cluster: &ClusterConfig{
			Name:      o.name,
			Secret:    o.secret,
			Listen:    "127.0.0.1:0",
			RPCListen: "127.0.0.1:0",
			Join:      join,
			HoldFor:   5 * time.Second,
			tune:      tune,
		},
	}
}

// startNode starts a node the way the gateway does: Join, load the server
// identity (received from the cluster by a new node), Run.
func startNode(cfg Config) (*Node, error) {
	n, err := Join(cfg)
	if err != nil {
		return nil, err
	}
	server, err := loadTestServer(cfg.DataDir, cfg.ServerName)
	if err != nil {
		_ = n.Stop(context.Background())
		return nil, err
	}
	if err := n.Run(server, cfg.Kinds, cfg.Storage); err != nil {
		return nil, err
	}
	return n, nil
}

// loadTestServer stands in for the gateway's signing key: a seed file in
// the data dir, made by the first node and handed to the others.
func loadTestServer(dir, name string) (*actors.ServerIdentity, error) {
	path := filepath.Join(dir, "server.seed")
	seed, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		seed = make([]byte, ed25519.SeedSize)
		_, _ = rand.Read(seed)
		err = os.WriteFile(path, seed, 0o600)
	}
	if err != nil {
		return nil, err
	}
	return &actors.ServerIdentity{ServerName: name, KeyID: "ed25519:t", PrivateKey: ed25519.NewKeyFromSeed(seed)}, nil
}

func (tc *testCluster) gossipAddr(i int) string { return tc.nodes[i].mem.selfEntry().GossipAddr }

// add starts a node in dir (a new one when dir is ""), joining through
// node 0 when there is one.
func (tc *testCluster) add(dir string) *Node {
	tc.t.Helper()
	if dir == "" {
		dir = tc.t.TempDir()
	}
	var join []string
	for i, n := range tc.nodes {
		if n != nil {
			join = []string{tc.gossipAddr(i)}
			break
		}
	}
	n, err := startNode(tc.config(dir, join, nodeOpts{}))
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.mu.Lock()
	tc.nodes = append(tc.nodes, n)
	tc.mu.Unlock()
	tc.dirs = append(tc.dirs, dir)
	tc.t.Cleanup(func() { _ = n.Stop(context.Background()) })
	return n
}

func newTestCluster(t *testing.T, nodes int, parts uint32) *testCluster {
	tc := &testCluster{t: t, tr: newTracker(t), parts: parts}
	for range nodes {
		tc.add("")
	}
	tc.settle()
	return tc
}

// drop forgets node i (stopped or gone) so that live no longer returns it.
func (tc *testCluster) drop(i int) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.nodes[i] = nil
}

func (tc *testCluster) live() []*Node {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	var out []*Node
	for _, n := range tc.nodes {
		if n != nil {
			out = append(out, n)
		}
	}
	return out
}

// settle waits until every live node sees the same placement and every
// partition is served by its owner.
func (tc *testCluster) settle() {
	tc.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		msg := tc.unsettled()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			tc.t.Fatalf("cluster did not settle: %s", msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (tc *testCluster) unsettled() string {
	live := tc.live()
	first := live[0].mem.view.Load()
	byID := map[string]*Node{}
	for _, n := range live {
		byID[n.id] = n
		v := n.mem.view.Load()
		for p := range v.owners {
			if v.owners[p] != first.owners[p] {
				return fmt.Sprintf("nodes %s and %s disagree on partition %d", live[0].id, n.id, p)
			}
		}
		for _, m := range live {
			if !v.alive[m.id] {
				return fmt.Sprintf("%s does not see %s alive", n.id, m.id)
			}
		}
	}
	for p, owner := range first.owners {
		o := byID[owner]
		if o == nil {
			return fmt.Sprintf("partition %d owned by %s, which is not running", p, owner)
		}
		if s := o.states[p].report.Load().state; s != hostServing {
			return fmt.Sprintf("partition %d is %s on its owner %s", p, s, owner)
		}
		for _, n := range live {
			if n != o && n.states[p].report.Load().state != hostAbsent {
				return fmt.Sprintf("partition %d still %s on %s", p, n.states[p].report.Load().state, n.id)
			}
		}
	}
	return ""
}

func incrOn(ctx context.Context, n *Node, user string) (uint64, error) {
	res, err := n.Request(ctx, &pb.AccountUpdate{UserId: user})
	if err != nil {
		return 0, err
	}
	var v uint64
	_, err = fmt.Sscan(string(res.(*pb.AccountUpdateReply).Json), &v)
	return v, err
}

func valueOn(t *testing.T, n *Node, user string) uint64 {
	t.Helper()
	res, err := n.Request(context.Background(), &pb.AccountQuery{UserId: user})
	if err != nil {
		t.Fatalf("query %s: %v", user, err)
	}
	var v uint64
	fmt.Sscan(string(res.(*pb.AccountQueryReply).Json), &v)
	return v
}

// userOn finds a user whose partition node n owns.
func userOn(t *testing.T, n *Node, prefix string) string {
	t.Helper()
	v := n.mem.view.Load()
	for i := range 10000 {
		u := fmt.Sprintf("@%s%d:cluster.test", prefix, i)
		if v.owners[partitionOf(pb.UserIdentity(u), n)] == n.id {
			return u
		}
	}
	t.Fatal("no user found")
	return ""
}

func partitionOf(identity string, n *Node) uint32 {
	return storage.PartitionOf(identity, n.cfg.Partitions)
}

// Three nodes: one cluster identity, every node serves every identity
// wherever it lives, errors cross the wire as Matrix errors, and Send
// reaches remote actors.
func TestClusterThreeNodes(t *testing.T) {
	skipUnderRace(t)
	tc := newTestCluster(t, 3, 32)
	a, b, c := tc.nodes[0], tc.nodes[1], tc.nodes[2]

	ids := map[string]bool{}
	for _, n := range tc.nodes {
		ids[n.ID()] = true
		if !n.Server().PrivateKey.Equal(a.Server().PrivateKey) {
			t.Fatalf("node %s has another signing key", n.ID())
		}
		if n.mem.id() != a.mem.id() {
			t.Fatal("nodes disagree on the cluster ID")
		}
	}
	if len(ids) != 3 {
		t.Fatalf("node IDs not distinct: %v", ids)
	}
	for _, n := range tc.nodes {
		if len(n.Store().Partitions()) == 0 {
			t.Fatalf("node %s holds no partition of 32", n.ID())
		}
	}

	ctx := context.Background()
	// The same users, driven round-robin through all nodes.
	for u := range 20 {
		user := fmt.Sprintf("@u%d:cluster.test", u)
		for i := 1; i <= 6; i++ {
			got, err := incrOn(ctx, tc.nodes[i%3], user)
			if err != nil {
				t.Fatalf("incr %s via node %d: %v", user, i%3, err)
			}
			if got != uint64(i) {
				t.Fatalf("%s: got %d, want %d", user, got, i)
			}
		}
	}

	// A Matrix error from a remote actor comes back as one.
	remoteUser := userOn(t, b, "err")
	_, err := a.Request(ctx, &pb.AccountQuery{UserId: remoteUser, Kind: "fail", Key: "thing"})
	var me *actors.MatrixError
	if !errors.As(err, &me) || me.ErrCode != "M_FORBIDDEN" || me.Status != 403 || !strings.Contains(me.Message, "thing") {
		t.Fatalf("remote error: got %v", err)
	}
	// An identity of an unknown kind, on a remote partition.
	for i := 0; ; i++ {
		room := fmt.Sprintf("!r%d:cluster.test", i)
		if b.mem.view.Load().owners[partitionOf(pb.RoomIdentity(room), b)] != c.id {
			continue
		}
		_, err = a.Request(ctx, &pb.RoomQuery{RoomId: room})
		if !errors.As(err, &me) || me.Status != 404 || me.ErrCode != "M_UNRECOGNIZED" {
			t.Fatalf("unknown kind on a remote node: got %v", err)
		}
		break
	}

	// Send crosses nodes too.
	target := userOn(t, c, "notice")
	for range 5 {
		a.Send(&pb.RoomNotice{UserId: target})
	}
	waitUntil(t, "notices to arrive", func() bool { return valueOn(t, b, target) == 5 })
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// load drives increments of users through random nodes until stopped, and
// records every acknowledged value.
type load struct {
	mu       sync.Mutex
	acked    map[string][]uint64
	failures map[string]int
	errs     []error
	stop     chan struct{}
	wg       sync.WaitGroup
	total    atomic.Int64
}

func startLoad(tc *testCluster, users, workers int) *load {
	l := &load{acked: map[string][]uint64{}, failures: map[string]int{}, stop: make(chan struct{})}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				user := fmt.Sprintf("@load%d:cluster.test", (w*7919+i)%users)
				nodes := tc.live()
				n := nodes[(w+i)%len(nodes)]
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				v, err := incrOn(ctx, n, user)
				cancel()
				l.mu.Lock()
				if err != nil {
					l.failures[user]++
					l.errs = append(l.errs, fmt.Errorf("%s via %s at %s: %w", user, n.id, time.Now().Format("15:04:05.000"), err))
				} else {
					l.acked[user] = append(l.acked[user], v)
					l.total.Add(1)
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *load) finish() {
	close(l.stop)
	l.wg.Wait()
}

// check verifies that no acknowledged increment was lost or given twice:
// the values acknowledged for a user are distinct, and the stored counter
// accounts for each of them (plus, at most, the requests whose outcome the
// caller could not learn).
func (l *load) check(t *testing.T, n *Node) {
	t.Helper()
	for user, vals := range l.acked {
		seen := map[uint64]bool{}
		for _, v := range vals {
			if seen[v] {
				t.Fatalf("%s: value %d acknowledged twice", user, v)
			}
			seen[v] = true
		}
		final := valueOn(t, n, user)
		if final < uint64(len(vals)) {
			t.Fatalf("%s: counter %d but %d increments acknowledged: writes lost", user, final, len(vals))
		}
		for _, v := range vals {
			if v > final {
				t.Fatalf("%s: acknowledged %d but the counter is %d: writes lost", user, v, final)
			}
		}
		if extra := final - uint64(len(vals)); extra > uint64(l.failures[user]) {
			t.Fatalf("%s: counter %d, %d acknowledged, only %d failed", user, final, len(vals), l.failures[user])
		}
	}
}

// A fourth node joins and one leaves under a steady load: partitions move
// with their data, no acknowledged write is lost or repeated, and there is
// never a second live activation of an identity.
func TestClusterHandoffUnderLoad(t *testing.T) {
	skipUnderRace(t)
	tc := newTestCluster(t, 3, 32)
	l := startLoad(tc, 40, 6)
	time.Sleep(500 * time.Millisecond)

	d := tc.add("")
	tc.settle()
	if len(d.Store().Partitions()) == 0 {
		t.Fatal("the new node took no partition")
	}
	time.Sleep(300 * time.Millisecond)

	leaving := tc.nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := leaving.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-leaving.Left():
	default:
		t.Fatal("Left not closed after Leave")
	}
	if held := leaving.Store().Partitions(); len(held) != 0 {
		t.Fatalf("the node that left still holds %v", held)
	}
	if files, _ := storage.PartitionFiles(tc.dirs[1]); len(files) != 0 {
		t.Fatalf("the node that left still has partition files %v", files)
	}
	if err := leaving.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	tc.drop(1)
	tc.settle()
	time.Sleep(300 * time.Millisecond)
	l.finish()

	if l.total.Load() < 100 {
		t.Fatalf("only %d increments went through", l.total.Load())
	}
	l.check(t, tc.nodes[0])
	t.Logf("%d increments acknowledged, %d failed (%v)", l.total.Load(), len(l.errs), firstErrs(l.errs, 3))
	for _, err := range l.errs {
		var me *actors.MatrixError
		if !errors.As(err, &me) || me.ErrCode != "M_UNAVAILABLE" || me.Extra["retry_after_ms"] == nil {
			t.Fatalf("a failure that is not 503 M_UNAVAILABLE with retry_after_ms: %v", err)
		}
	}
	st := tc.nodes[0].Status(context.Background())
	for _, m := range st.Members {
		if m.ID == leaving.ID() && m.Status != "left" {
			t.Fatalf("the node that left is %q in the roster", m.Status)
		}
	}
	for _, ps := range st.Map {
		if ps.Holder != ps.Owner || ps.State != "serving" || ps.Epoch < 1 {
			t.Fatalf("partition %d: %+v", ps.Partition, ps)
		}
	}
}

func firstErrs(errs []error, n int) []error {
	if len(errs) > n {
		return errs[:n]
	}
	return errs
}

// A node that stops (without leaving) keeps its partitions: they answer
// 503 M_UNAVAILABLE with Retry-After meanwhile — no empty actor elsewhere —
// and everything it held is back when it returns.
func TestClusterNodeDownAndBack(t *testing.T) {
	skipUnderRace(t)
	tc := newTestCluster(t, 3, 32)
	a, c := tc.nodes[0], tc.nodes[2]
	ctx := context.Background()
	onC := userOn(t, c, "c")
	onA := userOn(t, a, "a")
	for range 3 {
		if _, err := incrOn(ctx, a, onC); err != nil {
			t.Fatal(err)
		}
	}
	held := c.Store().Partitions()
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	tc.drop(2)
	waitUntil(t, "node c to be seen gone", func() bool { return !a.mem.view.Load().alive[c.id] })
	_, err := incrOn(ctx, a, onC)
	var me *actors.MatrixError
	if !errors.As(err, &me) || me.Status != 503 || me.ErrCode != "M_UNAVAILABLE" || me.Extra["retry_after_ms"] == nil {
		t.Fatalf("request for a stopped node's partition: got %v", err)
	}
	if _, err := incrOn(ctx, a, onA); err != nil {
		t.Fatalf("other partitions must keep serving: %v", err)
	}
	for _, n := range tc.live() {
		for _, p := range held {
			if s := n.states[p].report.Load().state; s != hostAbsent {
				t.Fatalf("partition %d of the stopped node is %s on %s", p, s, n.id)
			}
		}
	}

	// Back, under its ID and with its data.
	c2 := tc.add(tc.dirs[2])
	tc.drop(2)
	if c2.ID() != c.ID() {
		t.Fatalf("restarted node has ID %s, was %s", c2.ID(), c.ID())
	}
	tc.settle()
	if got, err := incrOn(ctx, a, onC); err != nil || got != 4 {
		t.Fatalf("after restart: %d %v, want 4", got, err)
	}
}

// Nodes of another cluster name, server name, partition count or secret are
// refused, with an error that says why.
func TestClusterRefusesMismatchedNodes(t *testing.T) {
	skipUnderRace(t)
	tc := newTestCluster(t, 1, 8)
	join := []string{tc.gossipAddr(0)}
	for _, c := range []struct {
		opts nodeOpts
		want string
	}{
		{nodeOpts{server: "other.test"}, `server name "cluster.test"`},
		{nodeOpts{partitions: 16}, "8 partitions"},
		{nodeOpts{name: "elsewhere"}, `cluster "test"`},
		{nodeOpts{secret: "another secret, not ours"}, "cluster secret"},
	} {
		_, err := startNode(tc.config(t.TempDir(), join, c.opts))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want an error mentioning %q", c.opts, err, c.want)
		}
	}
	// A data dir of another cluster cannot join this one.
	other := &testCluster{t: t, tr: newTracker(t), parts: 8}
	other.add("")
	dir := other.dirs[0]
	if err := other.nodes[0].Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "server.seed")); err != nil {
		t.Fatal(err)
	}
	cfg := tc.config(dir, join, nodeOpts{})
	if _, err := startNode(cfg); err == nil || !strings.Contains(err.Error(), "cluster ID") {
		t.Fatalf("data dir of another cluster: got %v", err)
	}
	// A one-node data dir with data cannot join.
	local := t.TempDir()
	priv := ed25519.NewKeyFromSeed(make([]byte, 32))
	n, err := Start(Config{DataDir: local, Partitions: 8, Server: &actors.ServerIdentity{ServerName: "cluster.test", PrivateKey: priv}})
	if err != nil {
		t.Fatal(err)
	}
	n.Stop(context.Background())
	if _, err := startNode(tc.config(local, join, nodeOpts{})); err == nil || !strings.Contains(err.Error(), "belongs to no cluster") {
		t.Fatalf("one-node data dir joining: got %v", err)
	}
	// A clustered data dir cannot be started as a one-node server.
	if _, err := Start(Config{DataDir: tc.dirs[0], Partitions: 8, Server: &actors.ServerIdentity{ServerName: "cluster.test", PrivateKey: priv}}); err == nil || !strings.Contains(err.Error(), "belongs to cluster") {
		t.Fatalf("clustered data dir started alone: got %v", err)
	}
}

// A node that stopped in the middle of a handoff finds its partition sealed
// at start: it serves nothing of it until the receiver has answered, then
// serves it again (the receiver never got it) with every write intact. A
// receiver that stopped between installing and unsealing a partition
// unseals it at start.
func TestClusterSealedAtStart(t *testing.T) {
	skipUnderRace(t)
	tc := newTestCluster(t, 2, 16)
	a, b := tc.nodes[0], tc.nodes[1]
	ctx := context.Background()
	onA := userOn(t, a, "sealed")
	for range 3 {
		if _, err := incrOn(ctx, b, onA); err != nil {
			t.Fatal(err)
		}
	}
	p := partitionOf(pb.UserIdentity(onA), a)
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	tc.drop(0)
	// As if a had sealed p for b and stopped before hearing back.
	part, err := storage.Open(filepath.Join(tc.dirs[0], storage.PartitionFile(p)), p, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := part.Seal(part.Epoch()+1, sealNote(b.ID())); err != nil {
		t.Fatal(err)
	}
	sealedAt := part.Epoch()
	if err := part.Close(); err != nil {
		t.Fatal(err)
	}
	a2 := tc.add(tc.dirs[0])
	tc.settle()
	if got := a2.states[p].report.Load(); got.state != hostServing || got.epoch != sealedAt {
		t.Fatalf("partition %d after restart: %s at epoch %d, want serving at %d", p, got.state, got.epoch, sealedAt)
	}
	if got, err := incrOn(ctx, b, onA); err != nil || got != 4 {
		t.Fatalf("after the sealed restart: %d %v, want 4", got, err)
	}

	// b stopped after installing a partition, before unsealing it.
	onB := userOn(t, b, "recv")
	if _, err := incrOn(ctx, a2, onB); err != nil {
		t.Fatal(err)
	}
	q := partitionOf(pb.UserIdentity(onB), b)
	if err := b.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	tc.drop(1)
	part, err = storage.Open(filepath.Join(tc.dirs[1], storage.PartitionFile(q)), q, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := part.Seal(part.Epoch(), sealNote(b.ID())); err != nil {
		t.Fatal(err)
	}
	if err := part.Close(); err != nil {
		t.Fatal(err)
	}
	tc.add(tc.dirs[1])
	tc.settle()
	if got, err := incrOn(ctx, a2, onB); err != nil || got != 2 {
		t.Fatalf("after the receiver's restart: %d %v, want 2", got, err)
	}
}

// A partition moves with its media blobs: each arrives checked against its
// name, uploads still being staged stay behind, and the old owner keeps
// nothing of the partition (file, blobs, derived indexes).
func TestClusterHandoffMovesBlobs(t *testing.T) {
	skipUnderRace(t)
	tc := newTestCluster(t, 1, 1)
	a := tc.nodes[0]
	part, _ := a.Store().Partition(0)
	blobs := storage.BlobsOf(part)
	contents := [][]byte{{}, make([]byte, chunkSize), make([]byte, chunkSize*5/2)}
	for i, c := range contents {
		for j := range c {
			c[j] = byte(i + j*31)
		}
	}
	var sums []string
	for _, c := range contents {
		sum := sha256.Sum256(c)
		s := hex.EncodeToString(sum[:])
		sums = append(sums, s)
		if err := os.MkdirAll(filepath.Dir(blobs.Path(s)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(blobs.Path(s), c, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	staging, err := blobs.StagingDir()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "up-1"), []byte("half an upload"), 0o600); err != nil {
		t.Fatal(err)
	}
	search := part.Path() + ".search"
	if err := os.MkdirAll(search, 0o700); err != nil {
		t.Fatal(err)
	}
	user := "@blobs:cluster.test"
	if _, err := incrOn(context.Background(), a, user); err != nil {
		t.Fatal(err)
	}

	b := tc.add("")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	got, ok := b.Store().Partition(0)
	if !ok {
		t.Fatal("the partition did not arrive")
	}
	have, err := storage.BlobSums(got)
	if err != nil || !slices.Equal(have, slices.Sorted(slices.Values(sums))) {
		t.Fatalf("blobs after the move: %v %v, want %v", have, err, sums)
	}
	for i, s := range sums {
		data, err := os.ReadFile(storage.BlobsOf(got).Path(s))
		if err != nil || !bytes.Equal(data, contents[i]) {
			t.Fatalf("blob %s after the move: %d bytes, %v", s, len(data), err)
		}
	}
	if _, err := os.Stat(filepath.Join(storage.BlobsOf(got).Dir(), "staging", "up-1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a staged upload moved: %v", err)
	}
	for _, gone := range []string{part.Path(), blobs.Dir(), search} {
		if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still on the node that left: %v", gone, err)
		}
	}
	if v, err := incrOn(context.Background(), b, user); err != nil || v != 2 {
		t.Fatalf("after the move: %d %v, want 2", v, err)
	}
}
