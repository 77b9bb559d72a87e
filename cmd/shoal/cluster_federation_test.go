package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// Federation through a cluster: a two-node cluster (server name
// localhost:<port of node 1>) shares a room with a one-node server
// (localhost:<its port>), all real processes with certificates of a test
// CA. Other servers reach the cluster through node 1 only, while the
// room's actor, the users' actors and the outbound queues sit wherever
// their partitions do: the traffic crosses the cluster transport.
func TestClusterFederation(t *testing.T) {
	ctx := context.Background()
	ca := shoaltest.NewCA(t)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := ca.Issue(t, t.TempDir(), "localhost")
	fedFlags := func(tlsAddr string) []string {
		return []string{"--tls-listen", tlsAddr, "--tls-cert", certFile, "--tls-key", keyFile,
			"--federation-ca-file", caFile, "--federation-allow-private"}
	}
	tlsA1, tlsA2, tlsB := freePort(t), freePort(t), freePort(t)
	nameA := "localhost:" + portOf(tlsA1)
	nameB := "localhost:" + portOf(tlsB)

	a1, a2 := newClusterProc(t, "a1"), newClusterProc(t, "a2")
	a1.serverName, a2.serverName = nameA, nameA
	a1.extra, a2.extra = fedFlags(tlsA1), fedFlags(tlsA2)
	b := newClusterProc(t, "b")
	b.serverName, b.extra = nameB, fedFlags(tlsB)
	a1.start(t, "")
	a2.start(t, a1.gossip)
	b.start(t, "")
	waitSettled(t, a1, a1, a2)

	alice := procClient(t, a2.client, "alice") // through the node federation does not reach
	carol := procClient(t, a1.client, "carol")
	bob := procClient(t, b.client, "bob")

	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "11"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	if _, err := carol.JoinRoom(ctx, room.String(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{nameA}}); err != nil {
		t.Fatalf("bob joins through the cluster: %v", err)
	}
	if _, err := alice.SendText(ctx, room, "from the cluster"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "bob gets the cluster's message", func() bool { return slices.Contains(procBodies(t, bob, room), "from the cluster") })
	if _, err := bob.SendText(ctx, room, "from b"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "alice and carol get bob's message", func() bool {
		return slices.Contains(procBodies(t, alice, room), "from b") && slices.Contains(procBodies(t, carol, room), "from b")
	})
	members, err := bob.JoinedMembers(ctx, room)
	if err != nil || len(members.Joined) != 3 {
		t.Fatalf("members as b sees them: %v %v", members, err)
	}
}

func portOf(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[i+1:]
		}
	}
	return addr
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: not within 60s", what)
}

// procBodies lists the message bodies of room's timeline as cli sees it.
func procBodies(t *testing.T, cli *mautrix.Client, room id.RoomID) []string {
	t.Helper()
	resp, err := cli.Messages(context.Background(), room, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		return nil
	}
	var out []string
	for _, ev := range resp.Chunk {
		if ev.Type != event.EventMessage {
			continue
		}
		var c struct {
			Body string `json:"body"`
		}
		_ = json.Unmarshal(ev.Content.VeryRaw, &c)
		out = append(out, c.Body)
	}
	return out
}
