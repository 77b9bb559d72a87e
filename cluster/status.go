package cluster

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/shoal-chat/shoal/cluster/clusterpb"
)

// Status is the cluster as one node sees it, with what every reachable
// member reports about itself. It is what `shoal cluster status` prints.
type Status struct {
	Cluster    string            `json:"cluster,omitempty"`
	ClusterID  string            `json:"cluster_id,omitempty"`
	Node       string            `json:"node,omitempty"` // the node answering
	Partitions uint32            `json:"partition_count"`
	Members    []MemberStatus    `json:"members"`
	Map        []PartitionStatus `json:"partitions"`
	Handoffs   []HandoffStatus   `json:"handoffs"`
}

// MemberStatus is one node of the roster.
type MemberStatus struct {
	ID          string `json:"id"`
	GossipAddr  string `json:"gossip_addr,omitempty"`
	RPCAddr     string `json:"rpc_addr,omitempty"`
	Status      string `json:"status"` // member, leaving, left
	Alive       bool   `json:"alive"`
	Incarnation uint64 `json:"incarnation"`
	// Reported says the node answered; Holds and ActiveActors are only
	// known then.
	Reported     bool     `json:"reported"`
	Holds        []uint32 `json:"holds"`
	ActiveActors int64    `json:"active_actors"`
}

// PartitionStatus is one partition: who should own it, who holds it.
type PartitionStatus struct {
	Partition uint32 `json:"partition"`
	Owner     string `json:"owner"`            // by placement
	Holder    string `json:"holder,omitempty"` // the node reporting a copy
	State     string `json:"state"`            // the holder's: serving, draining, sending, sealed; or unavailable
	Epoch     uint64 `json:"epoch"`
}

// HandoffStatus is a partition in flight.
type HandoffStatus struct {
	Partition uint32    `json:"partition"`
	From      string    `json:"from"`
	To        string    `json:"to"`
	Epoch     uint64    `json:"epoch"`
	Bytes     uint64    `json:"bytes"`
	Started   time.Time `json:"started"`
}

const clusterActorName = "cluster"

// clusterActor answers other nodes' StatusRequests.
type clusterActor struct{ n *Node }

func (c *clusterActor) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(*clusterpb.StatusRequest); ok {
		ctx.Respond(c.n.report())
	}
}

func (n *Node) spawnClusterActor() error {
	_, err := n.system.Root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return &clusterActor{n: n} }), clusterActorName)
	return err
}

// report is what this node holds and moves.
func (n *Node) report() *clusterpb.NodeReport {
	r := &clusterpb.NodeReport{NodeId: n.id, ActiveActors: n.ActiveActors()}
	for p, h := range n.states {
		if h == nil {
			continue
		}
		hr := h.report.Load()
		if hr.state == hostAbsent {
			continue
		}
		r.Partitions = append(r.Partitions, &clusterpb.PartitionReport{Partition: uint32(p), State: hr.state.String(), Epoch: hr.epoch})
	}
	n.xfersMu.Lock()
	for _, x := range n.xfers {
		r.Handoffs = append(r.Handoffs, &clusterpb.HandoffReport{Partition: x.partition, FromNode: x.from, ToNode: x.to,
			Epoch: x.epoch, Bytes: x.bytes.Load(), StartedUnixMs: x.started.UnixMilli()})
	}
	n.xfersMu.Unlock()
	return r
}

// Status gathers the cluster's state: the roster and placement as this node
// sees them, and the report of every member it can reach (each asked for at
// most two seconds).
func (n *Node) Status(ctx context.Context) *Status {
	st := &Status{Node: n.id, Partitions: n.cfg.Partitions}
	reports := map[string]*clusterpb.NodeReport{n.id: n.report()}
	if n.mem == nil {
		st.Members = []MemberStatus{{ID: n.id, Status: "member", Alive: true}}
		owners := make([]string, n.cfg.Partitions)
		st.fill(owners, reports)
		return st
	}
	st.Cluster, st.ClusterID = n.cfg.Cluster.Name, n.mem.id()
	v := n.mem.view.Load()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id, m := range v.members {
		if id == n.id || !v.alive[id] || m.RpcAddr == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			f := n.system.Root.RequestFuture(actor.NewPID(m.RpcAddr, clusterActorName), &clusterpb.StatusRequest{}, 2*time.Second)
			res, err := n.resultOf(rctx, f, n.peerDone(m.RpcAddr))
			if rep, ok := res.(*clusterpb.NodeReport); ok && err == nil {
				mu.Lock()
				reports[id] = rep
				mu.Unlock()
			} else {
				n.log.Debug("cluster: no status from member", slog.String("member", id), slog.Any("err", err))
			}
		}()
	}
	wg.Wait()
	for _, id := range slices.Sorted(maps.Keys(v.members)) {
		m := v.members[id]
		st.Members = append(st.Members, MemberStatus{ID: id, GossipAddr: m.GossipAddr, RPCAddr: m.RpcAddr,
			Status: statusName(m.Status), Alive: v.alive[id], Incarnation: m.Incarnation})
	}
	st.fill(v.owners, reports)
	return st
}

// fill completes members' holdings, the partition map and the handoffs from
// the reports.
func (st *Status) fill(owners []string, reports map[string]*clusterpb.NodeReport) {
	st.Map = make([]PartitionStatus, st.Partitions)
	for p := range st.Map {
		st.Map[p] = PartitionStatus{Partition: uint32(p), Owner: owners[p], State: "unavailable"}
	}
	seen := map[uint32]bool{}
	for i := range st.Members {
		m := &st.Members[i]
		rep, ok := reports[m.ID]
		if !ok {
			continue
		}
		m.Reported, m.ActiveActors, m.Holds = true, rep.ActiveActors, []uint32{}
		for _, pr := range rep.Partitions {
			if pr.Partition >= st.Partitions {
				continue
			}
			if pr.State == hostReceiving.String() {
				continue
			}
			m.Holds = append(m.Holds, pr.Partition)
			ps := &st.Map[pr.Partition]
			if ps.Holder == "" || pr.Epoch > ps.Epoch {
				ps.Holder, ps.State, ps.Epoch = m.ID, pr.State, pr.Epoch
			}
		}
		for _, h := range rep.Handoffs {
			// Both ends report a transfer; list it once.
			if seen[h.Partition] {
				continue
			}
			seen[h.Partition] = true
			st.Handoffs = append(st.Handoffs, HandoffStatus{Partition: h.Partition, From: h.FromNode, To: h.ToNode,
				Epoch: h.Epoch, Bytes: h.Bytes, Started: time.UnixMilli(h.StartedUnixMs).UTC()})
		}
	}
	sort.Slice(st.Handoffs, func(i, j int) bool { return st.Handoffs[i].Partition < st.Handoffs[j].Partition })
}
