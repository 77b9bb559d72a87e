package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// Config is what a node needs to start.
type Config struct {
	DataDir    string
	Partitions uint32 // fixed when the cluster is created
	Kinds      map[string]Producer
	Server     *actors.ServerIdentity
	Log        *slog.Logger
	Now        func() time.Time
	// IdleTimeout: an actor that received nothing for this long passivates.
	IdleTimeout time.Duration
	// RequestTimeout bounds a request whose context has no deadline.
	RequestTimeout time.Duration
	Storage        storage.Options
}

// Node is one member of a shoal cluster. It implements actors.Router.
type Node struct {
	cfg    Config
	log    *slog.Logger
	system *actor.ActorSystem
	store  *storage.Store
	kinds  map[string]Producer
	hosts  []*actor.PID // by partition; nil where another node owns it

	metrics struct {
		activations atomic.Int64
	}
}

var _ actors.Router = (*Node)(nil)

// Start opens the node's partitions and starts their hosts. With one node
// every partition is local.
func Start(cfg Config) (*Node, error) {
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
	ids := make([]uint32, cfg.Partitions)
	for i := range ids {
		ids[i] = uint32(i)
	}
	store, err := storage.OpenStore(cfg.DataDir, ids, cfg.Storage)
	if err != nil {
		return nil, fmt.Errorf("cluster: open store: %w", err)
	}
	n := &Node{
		cfg:    cfg,
		log:    cfg.Log,
		system: actor.NewActorSystem(actor.WithLoggerFactory(quietLogger(cfg.Log))),
		store:  store,
		kinds:  cfg.Kinds,
		hosts:  make([]*actor.PID, cfg.Partitions),
	}
	for _, p := range ids {
		part, ok := store.Partition(p)
		if !ok {
			store.Close()
			return nil, fmt.Errorf("cluster: partition %d not opened", p)
		}
		h := &host{partition: p, store: part, node: n,
			children: map[string]*actor.PID{}, names: map[string]string{}, stopping: map[string][]pendingMessage{}}
		pid, err := n.system.Root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return h }), fmt.Sprintf("partition-%d", p))
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("cluster: start host of partition %d: %w", p, err)
		}
		n.hosts[p] = pid
	}
	return n, nil
}

// Stop stops every actor (each finishes the message it is handling) and
// closes the partitions.
func (n *Node) Stop(ctx context.Context) error {
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
	n.system.Shutdown()
	return n.store.Close()
}

// ActiveActors is the number of activations on this node.
func (n *Node) ActiveActors() int64 { return n.metrics.activations.Load() }

// PartitionCount is the cluster's fixed number of partitions.
func (n *Node) PartitionCount() uint32 { return n.cfg.Partitions }

// Store is the node's set of partition files (for operations and tests).
func (n *Node) Store() *storage.Store { return n.store }

func (n *Node) hostFor(identity string) (*actor.PID, error) {
	p := storage.PartitionOf(identity, n.cfg.Partitions)
	pid := n.hosts[p]
	if pid == nil {
		return nil, &actors.MatrixError{Status: http.StatusServiceUnavailable, ErrCode: "M_UNAVAILABLE",
			Message: "partition not available", Extra: map[string]any{"retry_after_ms": 1000}}
	}
	return pid, nil
}

// Request implements actors.Router.
func (n *Node) Request(ctx context.Context, msg pb.Targeted) (proto.Message, error) {
	pid, err := n.hostFor(msg.ActorIdentity())
	if err != nil {
		return nil, err
	}
	timeout := n.cfg.RequestTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, context.DeadlineExceeded
		}
	}
	f := n.system.Root.RequestFuture(pid, msg, timeout)
	res, err := resultOf(ctx, f)
	if err != nil {
		if errors.Is(err, actor.ErrTimeout) {
			return nil, actors.Errorf(http.StatusGatewayTimeout, "M_UNKNOWN", "request to %s timed out", msg.ActorIdentity())
		}
		return nil, err
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

// Send implements actors.Router.
func (n *Node) Send(msg pb.Targeted) {
	pid, err := n.hostFor(msg.ActorIdentity())
	if err != nil {
		n.log.Warn("cluster: dropping message for unavailable partition", slog.String("to", msg.ActorIdentity()))
		return
	}
	n.system.Root.Send(pid, msg)
}

func resultOf(ctx context.Context, f *actor.Future) (any, error) {
	if ctx.Done() == nil {
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
	}
}

func waitFuture(ctx context.Context, f *actor.Future) error {
	_, err := resultOf(ctx, f)
	return err
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
