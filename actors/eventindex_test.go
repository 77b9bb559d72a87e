package actors_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster"
)

// indexNode runs a one-node cluster with only the event index kind.
type indexNode struct {
	t    *testing.T
	dir  string
	node *cluster.Node
}

func (n *indexNode) start() {
	n.t.Helper()
	cn, err := cluster.Start(cluster.Config{
		DataDir:    n.dir,
		Partitions: 4,
		Server: &actors.ServerIdentity{ServerName: testServer, KeyID: "ed25519:test",
			PrivateKey: ed25519.NewKeyFromSeed(make([]byte, 32))},
		Kinds: map[string]cluster.Producer{pb.KindEventIndex: actors.NewEventIndex},
	})
	if err != nil {
		n.t.Fatal(err)
	}
	n.node = cn
}

func (n *indexNode) stop() {
	if n.node == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.node.Stop(ctx); err != nil {
		n.t.Errorf("stop: %v", err)
	}
	n.node = nil
}

func (n *indexNode) lookup(eventID string) string {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := n.node.Request(ctx, &pb.EventIndexLookup{Shard: pb.EventIndexShard(eventID), EventId: eventID})
	if err != nil {
		n.t.Fatalf("lookup %s: %v", eventID, err)
	}
	return res.(*pb.EventIndexReply).RoomId
}

// add sends an EventIndexAdd per shard, as rooms do, and waits for each
// shard's acknowledgement.
func (n *indexNode) add(room string, ids ...string) {
	n.t.Helper()
	byShard := map[string][]string{}
	for _, id := range ids {
		s := pb.EventIndexShard(id)
		byShard[s] = append(byShard[s], id)
	}
	for s, ids := range byShard {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := n.node.Request(ctx, &pb.EventIndexAdd{Shard: s, RoomId: room, EventIds: ids})
		cancel()
		if err != nil {
			n.t.Fatalf("add: %v", err)
		}
	}
}

func TestEventIndexActor(t *testing.T) {
	n := &indexNode{t: t, dir: t.TempDir()}
	n.start()
	t.Cleanup(n.stop)
	var ids []string
	for i := range 200 {
		ids = append(ids, fmt.Sprintf("$event%d", i))
	}
	n.add("!one:"+testServer, ids[:150]...)
	n.add("!two:"+testServer, ids[150:]...)
	// A fire-and-forget add (how rooms send them), then a lookup on the
	// same shard: the shard handles its mailbox in order.
	late := "$late"
	n.node.Send(&pb.EventIndexAdd{Shard: pb.EventIndexShard(late), RoomId: "!two:" + testServer, EventIds: []string{late}})
	if got := n.lookup(late); got != "!two:"+testServer {
		t.Fatalf("fire-and-forget add: %q", got)
	}
	// An ID sent to the wrong shard is not indexed there.
	wrong := "$misrouted"
	other := "0"
	if pb.EventIndexShard(wrong) == other {
		other = "1"
	}
	n.node.Send(&pb.EventIndexAdd{Shard: other, RoomId: "!evil:" + testServer, EventIds: []string{wrong}})
	if got := n.lookup(wrong); got != "" {
		t.Errorf("misrouted ID indexed: %q", got)
	}
	// Unknown IDs and oversized ones are simply unknown.
	if got := n.lookup("$nope"); got != "" {
		t.Errorf("unknown event: %q", got)
	}
	check := func() {
		t.Helper()
		for i, id := range ids {
			want := "!one:" + testServer
			if i >= 150 {
				want = "!two:" + testServer
			}
			if got := n.lookup(id); got != want {
				t.Fatalf("%s: %q, want %q", id, got, want)
			}
		}
	}
	check()
	// A second room claiming an indexed event does not take it over.
	n.add("!evil:"+testServer, ids[0])
	// Everything is on disk: a restart answers the same.
	n.stop()
	n.start()
	check()
	if got := n.lookup(late); got != "!two:"+testServer {
		t.Errorf("after restart: %q", got)
	}
}
