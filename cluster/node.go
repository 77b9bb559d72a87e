package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster/clusterpb"
	"github.com/shoal-chat/shoal/storage"
)

// Config is what a node needs to start.
type Config struct {
	DataDir    string
	Partitions uint32 // fixed when the cluster is created
	Kinds      map[string]Producer
	// Server is the identity the actors sign with. Join, which runs before
	// the identity is known, takes its server name from ServerName.
	Server     *actors.ServerIdentity
	ServerName string
	// SharedFiles name the files of DataDir that are the same on every node
	// of a cluster (the signing key, ...): the first node makes them itself,
	// every joining node receives them in Join.
	SharedFiles []string
	Log         *slog.Logger
	Now         func() time.Time
	// IdleTimeout: an actor that received nothing for this long passivates.
	IdleTimeout time.Duration
	// RequestTimeout bounds a request whose context has no deadline.
	RequestTimeout time.Duration
	Storage        storage.Options
	// Cluster makes the node a member of a multi-node cluster; nil runs a
	// one-node cluster that holds every partition.
	Cluster *ClusterConfig
}

// Timing of the cluster machinery.
const (
	// retryAfter is what a client is told to wait when a partition is
	// unavailable.
	retryAfter = 2 * time.Second
	// handoffBackoff separates a failed handoff from the next attempt.
	handoffBackoff = 5 * time.Second
	// reconcileEvery is how often a node looks for partitions to hand over.
	reconcileEvery = 500 * time.Millisecond
	// rejoinEvery is how often a node contacts the members it does not see.
	rejoinEvery = 5 * time.Second
	// maxRouteAttempts bounds the re-routing of a request that reached a
	// node no longer (or not yet) holding its partition.
	maxRouteAttempts = 4
)

// Node is one member of a shoal cluster. It implements actors.Router.
type Node struct {
	cfg    Config
	log    *slog.Logger
	id     string // node ID; "" for a one-node cluster
	system *actor.ActorSystem
	remote *remote.Remote
	mem    *membership // nil for a one-node cluster
	store  *storage.Store
	kinds  map[string]Producer
	server *actors.ServerIdentity
	hosts  []*actor.PID // by partition
	states []*host      // by partition; only their published reports are read outside them

	ctx    context.Context // cancelled when the node stops
	cancel context.CancelFunc
	// down is closed when the node's transport and actor system go down:
	// requests still waiting then cannot get their answer any more.
	down chan struct{}
	wg   sync.WaitGroup
	kick chan struct{}

	peersMu sync.Mutex
	peers   map[string]chan struct{} // actor transport address → closed when the peer is lost
	lostAt  map[string]time.Time     // actor transport address → when its connection last broke

	xfersMu sync.Mutex
	xfers   map[uint32]*transfer // partitions in flight, to or from this node

	founding bool // this node founds its cluster (Join → Run)

	leaveMu  sync.Mutex
	leaving  bool
	left     chan struct{}
	stopOnce sync.Once
	stopErr  error

	metrics struct {
		activations atomic.Int64
		queued      atomic.Int64 // messages waiting in activations' mailboxes
	}
}

var _ actors.Router = (*Node)(nil)

// Start opens the node's partitions and starts their hosts. A one-node
// cluster holds every partition; a clustered node joins (or founds) its
// cluster, holds the partitions it held when it stopped, and from then on
// gives and takes partitions as members come and go. Start is Join then Run.
func Start(cfg Config) (*Node, error) {
	if cfg.Server == nil {
		return nil, errors.New("cluster: no server identity")
	}
	if cfg.Cluster == nil {
		n, err := newNode(cfg)
		if err != nil {
			return nil, err
		}
		if err := n.startLocal(); err != nil {
			_ = n.Stop(context.Background())
			return nil, err
		}
		return n, nil
	}
	n, err := Join(cfg)
	if err != nil {
		return nil, err
	}
	if err := n.Run(cfg.Server, cfg.Kinds, cfg.Storage); err != nil {
		return nil, err
	}
	return n, nil
}

// Join begins a clustered node (cfg.Cluster set): it starts the actor
// transport and gossip and joins the cluster, or founds it. A node joining
// for the first time receives the cluster's shared files into its data dir,
// so that what Run needs (the server identity) can be loaded from there.
// The node serves nothing until Run; Stop it if Run is not called.
func Join(cfg Config) (*Node, error) {
	if cfg.Cluster == nil {
		return nil, errors.New("cluster: Join needs the cluster settings")
	}
	if cfg.Server != nil {
		cfg.ServerName = cfg.Server.ServerName
	}
	n, err := newNode(cfg)
	if err != nil {
		return nil, err
	}
	if err := n.join(); err != nil {
		_ = n.Stop(context.Background())
		return nil, err
	}
	return n, nil
}

func newNode(cfg Config) (*Node, error) {
	if cfg.Partitions == 0 {
		return nil, errors.New("cluster: partition count must be positive")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 10 * time.Minute
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	if err := checkPartitionCount(cfg.DataDir, cfg.Partitions); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:    cfg,
		log:    cfg.Log,
		kinds:  cfg.Kinds,
		server: cfg.Server,
		hosts:  make([]*actor.PID, cfg.Partitions),
		states: make([]*host, cfg.Partitions),
		kick:   make(chan struct{}, 1),
		peers:  map[string]chan struct{}{},
		lostAt: map[string]time.Time{},
		xfers:  map[uint32]*transfer{},
		left:   make(chan struct{}),
		down:   make(chan struct{}),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.system = actor.NewActorSystem(actor.WithLoggerFactory(quietLogger(cfg.Log)))
	return n, nil
}

// startLocal starts a one-node cluster: every partition is here.
func (n *Node) startLocal() error {
	if saved, err := loadState(n.cfg.DataDir); err != nil {
		return err
	} else if saved != nil {
		return fmt.Errorf("cluster: data dir %s belongs to cluster %q: start it with its cluster settings (--cluster-listen, --cluster-secret)", n.cfg.DataDir, saved.ClusterName)
	}
	ids := make([]uint32, n.cfg.Partitions)
	for i := range ids {
		ids[i] = uint32(i)
	}
	store, err := storage.OpenStore(n.cfg.DataDir, ids, n.cfg.Storage)
	if err != nil {
		return fmt.Errorf("cluster: open store: %w", err)
	}
	n.store = store
	for _, p := range ids {
		part, _ := store.Partition(p)
		h := newHost(n, p)
		h.store, h.epoch, h.state = part, part.Epoch(), hostServing
		h.publish()
		if err := n.spawnHost(h); err != nil {
			return err
		}
	}
	return nil
}

// join joins or founds the cluster.
func (n *Node) join() error {
	cc := n.cfg.Cluster
	dir := n.cfg.DataDir
	if cc.Name == "" {
		return errors.New("cluster: the cluster needs a name")
	}
	if _, err := gossipKey(cc.Secret); err != nil {
		return err
	}
	id, err := loadOrCreateNodeID(dir)
	if err != nil {
		return err
	}
	n.id = id
	n.log = n.log.With(slog.String("node", id))
	saved, err := loadState(dir)
	if err != nil {
		return err
	}
	if saved != nil && saved.ClusterName != cc.Name {
		return fmt.Errorf("cluster: data dir %s belongs to cluster %q, not %q", dir, saved.ClusterName, cc.Name)
	}
	files, err := storage.PartitionFiles(dir)
	if err != nil {
		return err
	}
	founding := saved == nil && len(cc.Join) == 0
	joining := saved == nil && len(cc.Join) > 0
	n.founding = founding
	if joining && len(files) > 0 {
		return fmt.Errorf("cluster: data dir %s holds partitions but belongs to no cluster: it cannot join one (start it without --join to found a cluster with its data)", dir)
	}

	rpcListen, err := rpcListenAddr(cc)
	if err != nil {
		return err
	}
	tlsConf, err := newTransportTLS(cc.Secret, id)
	if err != nil {
		return err
	}
	r, rpcAddr, err := startTransport(n.system, rpcListen, cc.Advertise, tlsConf)
	if err != nil {
		return err
	}
	n.remote = r
	n.system.EventStream.Subscribe(func(evt any) {
		switch e := evt.(type) {
		case *remote.EndpointTerminatedEvent:
			n.peerLost(e.Address)
		case *remote.EndpointConnectedEvent:
			n.peerBack(e.Address)
		}
	})

	mem := newMembership(*cc, dir, id, n.cfg.ServerName, n.cfg.Partitions, saved, n.log)
	mem.changed = n.kickReconciler
	mem.lost = n.peerLost
	mem.back = n.peerBack
	n.mem = mem
	if err := mem.start(rpcAddr); err != nil {
		return err
	}
	switch {
	case founding:
		mem.setClusterID(newClusterID())
		n.log.Info("cluster: founding a new cluster", slog.String("cluster", cc.Name))
	case joining:
		if err := mem.join(cc.Join); err != nil {
			return err
		}
		if mem.id() == "" {
			return fmt.Errorf("cluster: join %s: no member handed over the cluster's identity", strings.Join(cc.Join, ","))
		}
		got := mem.receivedFiles()
		if len(got) == 0 && len(n.cfg.SharedFiles) > 0 {
			return fmt.Errorf("cluster: join %s: the cluster handed over none of its shared files", strings.Join(cc.Join, ","))
		}
		if err := writeSharedFiles(dir, got, n.cfg.SharedFiles); err != nil {
			return err
		}
	default:
		addrs := slices.Concat(cc.Join, mem.unreachable())
		if len(addrs) > 0 {
			if err := mem.join(addrs); err != nil {
				if mem.refusedErr() != nil {
					return err
				}
				// Everyone else may be down too: carry on with what this
				// node holds, and keep trying (rejoinLoop).
				n.log.Warn("cluster: no other member reachable yet", slog.Any("err", err))
			}
		}
	}
	return nil
}

// Run completes a node begun with Join: it opens the partitions this node
// holds and serves them with the given identity, actor kinds and storage
// options, then tells the cluster it is ready. On error the node is
// stopped.
func (n *Node) Run(server *actors.ServerIdentity, kinds map[string]Producer, opts storage.Options) error {
	if err := n.run(server, kinds, opts); err != nil {
		_ = n.Stop(context.Background())
		return err
	}
	return nil
}

func (n *Node) run(server *actors.ServerIdentity, kinds map[string]Producer, opts storage.Options) error {
	if n.mem == nil || n.store != nil {
		return errors.New("cluster: Run follows Join, once")
	}
	if server == nil {
		return errors.New("cluster: no server identity")
	}
	if server.ServerName != n.cfg.ServerName {
		return fmt.Errorf("cluster: server identity for %q, joined as %q", server.ServerName, n.cfg.ServerName)
	}
	n.server, n.kinds, n.cfg.Server, n.cfg.Kinds, n.cfg.Storage = server, kinds, server, kinds, opts
	dir, mem, founding := n.cfg.DataDir, n.mem, n.founding
	shared, err := readSharedFiles(dir, n.cfg.SharedFiles)
	if err != nil {
		return err
	}
	mem.setShared(shared)

	files, err := storage.PartitionFiles(dir)
	if err != nil {
		return err
	}
	open := files
	if founding {
		open = make([]uint32, n.cfg.Partitions)
		for i := range open {
			open[i] = uint32(i)
		}
	}
	if err := os.RemoveAll(filepath.Join(dir, "partitions", "incoming")); err != nil {
		return fmt.Errorf("cluster: clear unfinished transfers: %w", err)
	}
	store, err := storage.OpenStore(dir, open, n.cfg.Storage)
	if err != nil {
		return fmt.Errorf("cluster: open store: %w", err)
	}
	n.store = store
	for p := range n.cfg.Partitions {
		h := newHost(n, p)
		if part, ok := store.Partition(p); ok {
			if err := n.adopt(h, part, founding); err != nil {
				return err
			}
		}
		if err := n.spawnHost(h); err != nil {
			return err
		}
	}
	if err := n.spawnClusterActor(); err != nil {
		return err
	}
	if err := mem.save(); err != nil {
		return err
	}
	n.wg.Add(2)
	go n.reconcileLoop()
	go n.rejoinLoop()
	if err := mem.setReady(); err != nil {
		n.log.Warn("cluster: announce readiness", slog.Any("err", err))
	}
	self := mem.selfEntry()
	n.log.Info("cluster: node running", slog.String("cluster", n.cfg.Cluster.Name), slog.String("cluster_id", mem.id()),
		slog.String("gossip", self.GossipAddr), slog.String("rpc", self.RpcAddr), slog.Int("partitions_held", len(open)))
	return nil
}

// adopt sets a host up for a partition file found at start.
func (n *Node) adopt(h *host, part *storage.Partition, founding bool) error {
	if founding && part.Epoch() == 0 {
		// Epochs count owners from 1; 0 is a file no cluster owned.
		if err := part.SetEpoch(1); err != nil {
			return fmt.Errorf("cluster: partition %d: %w", part.ID(), err)
		}
	}
	note, sealed, err := part.Sealed()
	if err != nil {
		return fmt.Errorf("cluster: partition %d: %w", part.ID(), err)
	}
	h.store = part
	if sealed {
		to := sealTarget(note)
		if to != n.id {
			// Stopped while handing it over: find out whether it arrived.
			h.state, h.sealEpoch, h.target = hostSealed, part.Epoch(), to
			h.publish()
			return nil
		}
		// It was arriving here and was installed; only the unseal was
		// missing.
		if err := part.Unseal(); err != nil {
			return fmt.Errorf("cluster: partition %d: %w", part.ID(), err)
		}
	}
	h.epoch, h.state = part.Epoch(), hostServing
	h.publish()
	return nil
}

func (n *Node) spawnHost(h *host) error {
	pid, err := n.system.Root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return h }), hostName(h.partition))
	if err != nil {
		return fmt.Errorf("cluster: start host of partition %d: %w", h.partition, err)
	}
	n.hosts[h.partition] = pid
	n.states[h.partition] = h
	return nil
}

func rpcListenAddr(cc *ClusterConfig) (string, error) {
	if cc.RPCListen != "" {
		return cc.RPCListen, nil
	}
	host, port, err := splitHostPort(cc.Listen)
	if err != nil {
		return "", fmt.Errorf("cluster: cluster listen address %q: %w", cc.Listen, err)
	}
	if port == 0 {
		return net.JoinHostPort(host, "0"), nil
	}
	if port == 65535 {
		return "", fmt.Errorf("cluster: cannot derive the actor transport port from %q: set it", cc.Listen)
	}
	return net.JoinHostPort(host, strconv.Itoa(port+1)), nil
}

func newClusterID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Stop stops every actor (each finishes the message it is handling) and
// closes the partitions. A clustered node tells the others it is going, so
// that its partitions answer 503 at once until it is back; it stays a member
// and keeps its partitions (Leave gives them away).
func (n *Node) Stop(ctx context.Context) error {
	n.stopOnce.Do(func() { n.stopErr = n.stop(ctx) })
	return n.stopErr
}

func (n *Node) stop(ctx context.Context) error {
	n.cancel()
	if n.mem != nil {
		if err := n.mem.save(); err != nil {
			n.log.Warn("cluster: save roster", slog.Any("err", err))
		}
		n.mem.stop(true)
	}
	var futures []*actor.Future
	for _, pid := range n.hosts {
		if pid != nil {
			futures = append(futures, n.system.Root.StopFuture(pid))
		}
	}
	for _, f := range futures {
		if err := waitFuture(ctx, f); err != nil {
			n.log.Warn("cluster: host did not stop in time", slog.Any("err", err))
		}
	}
	n.wg.Wait()
	close(n.down)
	if n.remote != nil {
		// Not the graceful shutdown: it stops the endpoint manager under
		// goroutines still using it. The process or test is done with the
		// transport; closing the listener is what matters.
		n.remote.Shutdown(false)
	}
	n.system.Shutdown()
	if n.store != nil {
		return n.store.Close()
	}
	return nil
}

// ActiveActors is the number of activations on this node.
func (n *Node) ActiveActors() int64 { return n.metrics.activations.Load() }

// QueuedMessages is the number of messages waiting in the mailboxes of this
// node's activations: how far its actors are behind.
func (n *Node) QueuedMessages() int64 { return n.metrics.queued.Load() }

// PartitionCount is the cluster's fixed number of partitions.
func (n *Node) PartitionCount() uint32 { return n.cfg.Partitions }

// Store is the node's set of partition files (for operations and tests).
func (n *Node) Store() *storage.Store { return n.store }

// Server is the identity the node's actors sign with.
func (n *Node) Server() *actors.ServerIdentity { return n.server }

// ID is the node's ID; "" for a one-node cluster.
func (n *Node) ID() string { return n.id }

// Left is closed once the node has left the cluster (Leave).
func (n *Node) Left() <-chan struct{} { return n.left }

// --- routing ---

var errPeerLost = errors.New("cluster: connection to the node lost")

// route returns where to send a message for partition p, and a channel
// closed if the connection to that node is lost. Holding the partition
// decides: a node that holds it serves it (or holds the request while it
// moves). Otherwise the message goes to the owner placement names.
func (n *Node) route(p uint32) (*actor.PID, <-chan struct{}, error) {
	if n.mem == nil {
		return n.hosts[p], nil, nil
	}
	if r := n.states[p].report.Load(); r.state.holds() {
		return n.hosts[p], nil, nil
	}
	v := n.mem.view.Load()
	owner := v.owners[p]
	switch {
	case owner == "":
		return nil, nil, unavailableErr("no cluster member owns this partition")
	case owner == v.self:
		return n.hosts[p], nil, nil
	case !v.alive[owner]:
		return nil, nil, unavailableErr(fmt.Sprintf("the node holding partition %d is unreachable", p))
	}
	addr := v.members[owner].RpcAddr
	if n.recentlyLost(addr) {
		// Its connection just broke (a crash, before gossip has noticed):
		// answer at once rather than wait on a connection attempt.
		return nil, nil, unavailableErr(fmt.Sprintf("the node holding partition %d is unreachable", p))
	}
	return actor.NewPID(addr, hostName(p)), n.peerDone(addr), nil
}

func unavailableErr(msg string) *actors.MatrixError {
	return &actors.MatrixError{Status: http.StatusServiceUnavailable, ErrCode: "M_UNAVAILABLE",
		Message: msg, Extra: map[string]any{"retry_after_ms": int(retryAfter / time.Millisecond)}}
}

// Request implements actors.Router.
func (n *Node) Request(ctx context.Context, msg pb.Targeted) (proto.Message, error) {
	p := storage.PartitionOf(msg.ActorIdentity(), n.cfg.Partitions)
	deadline := time.Now().Add(n.cfg.RequestTimeout)
	if dl, ok := ctx.Deadline(); ok {
		deadline = dl
	}
	for attempt := 1; ; attempt++ {
		timeout := time.Until(deadline)
		if timeout <= 0 {
			return nil, context.DeadlineExceeded
		}
		pid, lost, err := n.route(p)
		if err != nil {
			return nil, err
		}
		f := n.system.Root.RequestFuture(pid, msg, timeout)
		res, err := n.resultOf(ctx, f, lost)
		var retry bool
		switch {
		case errors.Is(err, actor.ErrTimeout):
			return nil, actors.Errorf(http.StatusGatewayTimeout, "M_UNKNOWN", "request to %s timed out", msg.ActorIdentity())
		case errors.Is(err, actor.ErrDeadLetter):
			// Nobody there to take it (the node is starting or stopping):
			// it was not delivered, so it may go again.
			retry, err = true, unavailableErr("partition not served")
		case errors.Is(err, errPeerLost):
			// It may have been handled: only the client may repeat it.
			return nil, unavailableErr(fmt.Sprintf("the node holding partition %d went away", p))
		case errors.Is(err, errNodeDown):
			return nil, unavailableErr("this node is stopping")
		case err != nil:
			return nil, err
		}
		if u, ok := res.(*clusterpb.Unavailable); ok {
			retry, err = u.Retry, unavailableErr(u.Reason)
		}
		if err != nil {
			if !retry || attempt >= maxRouteAttempts {
				return nil, err
			}
			select {
			case <-time.After(time.Duration(attempt) * 50 * time.Millisecond):
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-n.ctx.Done():
				return nil, err
			}
		}
		switch r := res.(type) {
		case *pb.Error:
			return nil, actors.FromPB(r)
		case proto.Message:
			return r, nil
		default:
			return nil, fmt.Errorf("cluster: %s replied with %T", msg.ActorIdentity(), res)
		}
	}
}

// Send implements actors.Router.
func (n *Node) Send(msg pb.Targeted) {
	p := storage.PartitionOf(msg.ActorIdentity(), n.cfg.Partitions)
	pid, _, err := n.route(p)
	if err != nil {
		n.log.Debug("cluster: dropping message for unavailable partition", slog.String("to", msg.ActorIdentity()))
		return
	}
	n.system.Root.Send(pid, msg)
}

var errNodeDown = errors.New("cluster: node stopped")

// resultOf waits for f, for ctx, for the connection to the node answering
// (lost) and for this node's transport.
func (n *Node) resultOf(ctx context.Context, f *actor.Future, lost <-chan struct{}) (any, error) {
	v, err := resultOf(ctx, f, lost, n.down)
	return v, err
}

func resultOf(ctx context.Context, f *actor.Future, lost, down <-chan struct{}) (any, error) {
	if ctx.Done() == nil && lost == nil && down == nil {
		return f.Result()
	}
	type result struct {
		v   any
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := f.Result()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-lost:
		return nil, errPeerLost
	case <-down:
		return nil, errNodeDown
	}
}

func waitFuture(ctx context.Context, f *actor.Future) error {
	_, err := resultOf(ctx, f, nil, nil)
	return err
}

// peerDone returns a channel closed when the connection to addr is lost.
func (n *Node) peerDone(addr string) <-chan struct{} {
	n.peersMu.Lock()
	defer n.peersMu.Unlock()
	ch, ok := n.peers[addr]
	if !ok {
		ch = make(chan struct{})
		n.peers[addr] = ch
	}
	return ch
}

// peerLost fails the requests waiting on addr: its transport connection
// broke or membership declared the node gone. For a few seconds requests
// are not sent there.
func (n *Node) peerLost(addr string) {
	n.peersMu.Lock()
	ch, ok := n.peers[addr]
	delete(n.peers, addr)
	n.lostAt[addr] = time.Now()
	n.peersMu.Unlock()
	if ok {
		close(ch)
	}
}

// lostFor is how long after its connection broke a node is not sent
// requests (unless gossip says it is back first).
const lostFor = 3 * time.Second

func (n *Node) recentlyLost(addr string) bool {
	n.peersMu.Lock()
	defer n.peersMu.Unlock()
	at, ok := n.lostAt[addr]
	if ok && time.Since(at) > lostFor {
		delete(n.lostAt, addr)
		return false
	}
	return ok
}

// peerBack forgets that addr was lost: gossip saw the node come (back), or
// the transport connected to it.
func (n *Node) peerBack(addr string) {
	n.peersMu.Lock()
	delete(n.lostAt, addr)
	n.peersMu.Unlock()
}

// expects reports whether partition p belongs on this node.
func (n *Node) expects(p uint32) bool {
	if n.mem == nil {
		return true
	}
	return n.mem.view.Load().owners[p] == n.id
}

// handoffTarget returns the member partition p should move to now, or nil.
func (n *Node) handoffTarget(p uint32) *clusterpb.Member {
	if n.mem == nil {
		return nil
	}
	return n.mem.view.Load().handoffTarget(p)
}

func (n *Node) rpcAddrOf(nodeID string) string {
	if n.mem == nil {
		return ""
	}
	if m := n.mem.view.Load().members[nodeID]; m != nil {
		return m.RpcAddr
	}
	return ""
}

func (n *Node) holdFor() time.Duration {
	if n.cfg.Cluster != nil && n.cfg.Cluster.HoldFor > 0 {
		return n.cfg.Cluster.HoldFor
	}
	return 10 * time.Second
}

// --- rebalancing ---

func (n *Node) kickReconciler() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// reconcileLoop hands partitions held here to their owners, a few at a
// time, and completes a leave once nothing is held.
func (n *Node) reconcileLoop() {
	defer n.wg.Done()
	t := time.NewTicker(reconcileEvery)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.kick:
		case <-t.C:
		}
		n.reconcile()
		if err := n.mem.save(); err != nil {
			n.log.Warn("cluster: save roster", slog.Any("err", err))
		}
	}
}

func (n *Node) reconcile() {
	v := n.mem.view.Load()
	maxMoves := n.cfg.Cluster.MaxHandoffs
	if maxMoves <= 0 {
		maxMoves = 2
	}
	moving := 0
	var candidates []uint32
	for p, h := range n.states {
		switch h.report.Load().state {
		case hostDraining, hostSending, hostSealed:
			moving++
		case hostServing:
			if v.handoffTarget(uint32(p)) != nil {
				candidates = append(candidates, uint32(p))
			}
		}
	}
	for _, p := range candidates {
		if moving >= maxMoves {
			break
		}
		n.system.Root.Send(n.hosts[p], &startHandoff{to: v.handoffTarget(p)})
		moving++
	}
}

// rejoinLoop keeps contacting members that memberlist does not see: after
// a partition of the network, or when this node restarted while the others
// were down.
func (n *Node) rejoinLoop() {
	defer n.wg.Done()
	t := time.NewTicker(rejoinEvery)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		if addrs := n.mem.unreachable(); len(addrs) > 0 {
			if err := n.mem.join(addrs); err != nil {
				n.log.Debug("cluster: rejoin", slog.Any("err", err))
			}
		}
	}
}

// holdsAny reports whether a partition is held, or arriving, here.
func (n *Node) holdsAny() bool {
	for _, h := range n.states {
		if s := h.report.Load().state; s.holds() || s == hostReceiving {
			return true
		}
	}
	return false
}

// Leave hands every partition this node holds to the other members and
// leaves the cluster for good (its data dir then holds no partition). It
// returns once done, or with ctx's error, in which case the node stays a
// member and gets its share back. Left is closed once it has left.
func (n *Node) Leave(ctx context.Context) error {
	if err := n.beginLeave(); err != nil {
		return err
	}
	return n.finishLeave(ctx)
}

// StartLeave begins leaving and returns at once; the result of the leave
// (see Leave) comes on the channel.
func (n *Node) StartLeave(ctx context.Context) (<-chan error, error) {
	if err := n.beginLeave(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- n.finishLeave(ctx) }()
	return done, nil
}

func (n *Node) beginLeave() error {
	if n.mem == nil {
		return errors.New("cluster: a one-node server has no cluster to leave")
	}
	n.leaveMu.Lock()
	defer n.leaveMu.Unlock()
	if n.leaving {
		return errors.New("cluster: already leaving")
	}
	v := n.mem.view.Load()
	others := 0
	for id, m := range v.members {
		if id != n.id && m.Status == clusterpb.MemberStatus_MEMBER {
			others++
		}
	}
	if others == 0 {
		return errors.New("cluster: the last member cannot leave: its partitions would have nowhere to go")
	}
	n.leaving = true
	n.log.Info("cluster: leaving; handing over every partition")
	if err := n.mem.setStatus(clusterpb.MemberStatus_LEAVING); err != nil {
		n.leaving = false
		return err
	}
	return nil
}

func (n *Node) finishLeave(ctx context.Context) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for n.holdsAny() {
		select {
		case <-ctx.Done():
		case <-n.ctx.Done():
		case <-t.C:
			n.kickReconciler()
			continue
		}
		n.leaveMu.Lock()
		n.leaving = false
		n.leaveMu.Unlock()
		if err := n.mem.setStatus(clusterpb.MemberStatus_MEMBER); err != nil {
			n.log.Warn("cluster: rejoin after a failed leave", slog.Any("err", err))
		}
		if ctx.Err() != nil {
			return fmt.Errorf("cluster: leave: %w", ctx.Err())
		}
		return errors.New("cluster: leave: the node stopped")
	}
	if err := n.mem.setStatus(clusterpb.MemberStatus_LEFT); err != nil {
		return err
	}
	n.log.Info("cluster: left the cluster")
	close(n.left)
	return nil
}

// checkPartitionCount records the partition count in a new data dir and
// refuses to open one created with another count: identities would map to
// other partitions and their data would seem lost.
func checkPartitionCount(dir string, n uint32) error {
	path := filepath.Join(dir, "partition_count")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("cluster: data dir: %w", err)
		}
		return os.WriteFile(path, []byte(strconv.FormatUint(uint64(n), 10)+"\n"), 0o600)
	}
	if err != nil {
		return fmt.Errorf("cluster: read partition count: %w", err)
	}
	have, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 32)
	if err != nil {
		return fmt.Errorf("cluster: %s: %w", path, err)
	}
	if uint32(have) != n {
		return fmt.Errorf("cluster: data dir %s was created with %d partitions, not %d; the count is fixed when a cluster is created", dir, have, n)
	}
	return nil
}
