package actors_test

import (
	"crypto/ed25519"
	"encoding/json"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster"
)

// msgLog is a stand-in actor kind recording every message it receives.
type msgLog struct {
	mu   sync.Mutex
	msgs []proto.Message
}

func (l *msgLog) producer(*actors.Env) actor.Actor {
	return actor.ReceiveFunc(func(ctx actor.Context) {
		if m, ok := ctx.Message().(proto.Message); ok {
			l.mu.Lock()
			l.msgs = append(l.msgs, proto.Clone(m))
			l.mu.Unlock()
		}
	})
}

func (l *msgLog) all() []proto.Message {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]proto.Message(nil), l.msgs...)
}

// waitFor polls until pred holds for some message.
func (l *msgLog) waitFor(t *testing.T, what string, pred func(proto.Message) bool) proto.Message {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range l.all() {
			if pred(m) {
				return m
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no message %s", what)
	return nil
}

// eduOf returns the EDU of edu type typ in a FedEnqueue to dest, if m is one.
func eduOf(m proto.Message, dest, typ string) (map[string]any, bool) {
	q, ok := m.(*pb.FedEnqueue)
	if !ok || q.Destination != dest {
		return nil, false
	}
	for _, e := range q.Edus {
		if e.EduType == typ {
			var c map[string]any
			if json.Unmarshal(e.Content, &c) == nil {
				return c, true
			}
		}
	}
	return nil, false
}

// startEphemeralNode is a test node whose outbound queues and inbound
// federation actors are recorders.
func startEphemeralNode(t *testing.T) (*testNode, *msgLog, *msgLog) {
	t.Helper()
	queues, inbound := &msgLog{}, &msgLog{}
	tn := startKindsNode(t, map[string]cluster.Producer{pb.KindFedQueue: queues.producer, pb.KindFedTxn: inbound.producer})
	return tn, queues, inbound
}

// startKindsNode is a test node (server testServer) with the room-side
// kinds, user actors that record room notices, and the kinds of extra.
func startKindsNode(t *testing.T, extra map[string]cluster.Producer) *testNode {
	t.Helper()
	tn := &testNode{t: t, dir: t.TempDir(), notices: &noticeLog{},
		server: &actors.ServerIdentity{ServerName: testServer, KeyID: "ed25519:test",
			PrivateKey: ed25519.NewKeyFromSeed(make([]byte, 32))}}
	kinds := map[string]cluster.Producer{
		pb.KindRoom:      actors.NewRoom,
		pb.KindAlias:     actors.NewAlias,
		pb.KindDirectory: actors.NewDirectory,
		pb.KindCerts:     actors.NewCerts,
		pb.KindUserDir:   actors.NewUserDir,
		pb.KindUser:      tn.notices.producer,
	}
	maps.Copy(kinds, extra)
	n, err := cluster.Start(cluster.Config{DataDir: tn.dir, Partitions: 4, Server: tn.server, Kinds: kinds,
		RequestTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tn.node = n
	t.Cleanup(tn.stop)
	return tn
}

func typingUsers(t *testing.T, tn *testNode, room, viewer string) []string {
	t.Helper()
	_, obj := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: viewer, Membership: "join", Limit: 1})
	var eph struct {
		Events []struct {
			Type    string `json:"type"`
			Content struct {
				UserIDs []string `json:"user_ids"`
			} `json:"content"`
		} `json:"events"`
	}
	_ = json.Unmarshal(obj["ephemeral"], &eph)
	for _, e := range eph.Events {
		if e.Type == "m.typing" {
			return e.Content.UserIDs
		}
	}
	return nil
}

// Typing notifications and receipts with a server in the room: a local
// user's go out as EDUs to the remote server, a remote user's are taken
// only from its own server, for a joined user, while the room's server ACL
// allows that server (MSC4163); private receipts never travel.
func TestRoomEphemeralFederation(t *testing.T) {
	tn, queues, inbound := startEphemeralNode(t)
	alice := user("alice")
	room := tn.createRoom("10", alice, &pb.StateEvent{Type: "m.room.join_rules", Content: raw(map[string]string{"join_rule": "public"})})
	rs := newRemote(t, "remote.test", "10", room)
	rs.join(tn, "bob")
	bob := rs.user("bob")

	// Out: alice types, remote.test hears it.
	tn.must(&pb.Typing{RoomId: room, UserId: alice, Typing: true, TimeoutMs: 30000})
	queues.waitFor(t, "m.typing for alice", func(m proto.Message) bool {
		c, ok := eduOf(m, "remote.test", "m.typing")
		return ok && c["user_id"] == alice && c["room_id"] == room && c["typing"] == true
	})
	// The room's timer tick while alice still types announces her again,
	// before remote.test's own timeout drops her.
	starts := func() int {
		n := 0
		for _, m := range queues.all() {
			if c, ok := eduOf(m, "remote.test", "m.typing"); ok && c["user_id"] == alice && c["typing"] == true {
				n++
			}
		}
		return n
	}
	before := starts()
	tn.must(&pb.Typing{RoomId: room})
	deadline := time.Now().Add(5 * time.Second)
	for starts() == before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if starts() != before+1 {
		t.Fatalf("typing announcements %d after a tick, want %d", starts(), before+1)
	}
	tn.must(&pb.Typing{RoomId: room, UserId: alice, Typing: false})
	queues.waitFor(t, "m.typing stop for alice", func(m proto.Message) bool {
		c, ok := eduOf(m, "remote.test", "m.typing")
		return ok && c["user_id"] == alice && c["typing"] == false
	})

	// In: bob of remote.test types; the room tells remote.test's inbound
	// actor where bob is (for his presence) and does not echo the EDU.
	tn.must(&pb.Typing{RoomId: room, UserId: bob, Typing: true, Origin: "remote.test"})
	if got := typingUsers(t, tn, room, alice); len(got) != 1 || got[0] != bob {
		t.Fatalf("typing after bob's EDU: %v", got)
	}
	inbound.waitFor(t, "presence rooms of bob", func(m proto.Message) bool {
		pr, ok := m.(*pb.FedPresenceRooms)
		return ok && pr.Origin == "remote.test" && !pr.Left && len(pr.Users) == 1 &&
			pr.Users[0].UserId == bob && len(pr.Users[0].RoomIds) == 1 && pr.Users[0].RoomIds[0] == room
	})
	for _, m := range queues.all() {
		if c, ok := eduOf(m, "remote.test", "m.typing"); ok && c["user_id"] == bob {
			t.Fatal("a remote user's typing was sent back to its server")
		}
	}
	// Another server may not speak for bob; unjoined users of remote.test
	// may not type; a local user's typing never carries an origin.
	tn.mustFail(&pb.Typing{RoomId: room, UserId: bob, Typing: false, Origin: "other.test"}, "M_FORBIDDEN", 403)
	tn.mustFail(&pb.Typing{RoomId: room, UserId: rs.user("carol"), Typing: true, Origin: "remote.test"}, "M_FORBIDDEN", 403)
	tn.mustFail(&pb.Typing{RoomId: room, UserId: alice, Typing: true, Origin: "remote.test"}, "M_FORBIDDEN", 403)
	tn.mustFail(&pb.Typing{RoomId: room, UserId: bob, Typing: true}, "M_FORBIDDEN", 403)

	// Receipts.
	ev := tn.send(room, alice, "hello")
	tn.must(&pb.Receipt{RoomId: room, UserId: alice, ReceiptType: "m.read.private", EventId: ev})
	tn.must(&pb.Receipt{RoomId: room, UserId: alice, ReceiptType: "m.read", EventId: ev, ThreadId: "main"})
	receipt := queues.waitFor(t, "m.receipt for alice", func(m proto.Message) bool {
		_, ok := eduOf(m, "remote.test", "m.receipt")
		return ok
	})
	c, _ := eduOf(receipt, "remote.test", "m.receipt")
	got := c[room].(map[string]any)["m.read"].(map[string]any)[alice].(map[string]any)
	if ids := got["event_ids"].([]any); len(ids) != 1 || ids[0] != ev {
		t.Fatalf("receipt EDU: %v", c)
	}
	if d := got["data"].(map[string]any); d["thread_id"] != "main" || d["ts"] == nil {
		t.Fatalf("receipt EDU data: %v", d)
	}
	for _, m := range queues.all() {
		if q, ok := m.(*pb.FedEnqueue); ok {
			for _, e := range q.Edus {
				if strings.Contains(string(e.Content), "m.read.private") {
					t.Fatal("a private receipt was federated")
				}
			}
		}
	}
	tn.must(&pb.Receipt{RoomId: room, UserId: bob, ReceiptType: "m.read", EventId: ev, Ts: 1234, Origin: "remote.test"})
	_, obj := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: alice, Membership: "join", Limit: 1})
	if !strings.Contains(string(obj["ephemeral"]), `"`+bob+`":{"ts":1234}`) {
		t.Fatalf("bob's receipt not in alice's sync: %s", obj["ephemeral"])
	}
	tn.mustFail(&pb.Receipt{RoomId: room, UserId: bob, ReceiptType: "m.read.private", EventId: ev, Origin: "remote.test"}, "M_INVALID_PARAM", 400)
	tn.mustFail(&pb.Receipt{RoomId: room, UserId: bob, ReceiptType: "m.read", EventId: ev, Origin: "other.test"}, "M_FORBIDDEN", 403)

	// The room's ACL denies remote.test: its typing and receipts are dropped.
	tn.setState(room, alice, "m.room.server_acl", "", map[string]any{"allow": []string{"*"}, "deny": []string{"remote.test"}})
	_, err := tn.request(&pb.Typing{RoomId: room, UserId: bob, Typing: false, Origin: "remote.test"})
	if err == nil || !strings.Contains(err.Error(), "server ACL") {
		t.Fatalf("typing of an ACL-denied server: %v", err)
	}
	if got := typingUsers(t, tn, room, alice); len(got) != 1 || got[0] != bob {
		t.Fatalf("an ACL-denied server's typing stop was applied: %v", got)
	}
	ev2 := tn.send(room, alice, "again")
	_, err = tn.request(&pb.Receipt{RoomId: room, UserId: bob, ReceiptType: "m.read", EventId: ev2, Ts: 5678, Origin: "remote.test"})
	if err == nil || !strings.Contains(err.Error(), "server ACL") {
		t.Fatalf("receipt of an ACL-denied server: %v", err)
	}
}

// Presence with a server in a shared room: a local user's change goes to
// remote.test as an m.presence EDU, and teaches remote.test's inbound actor
// where its users are; remote.test's presence update then reaches the
// local members of those rooms, and no one else.
func TestFedPresenceBothWays(t *testing.T) {
	queues := &msgLog{}
	tn := startKindsNode(t, map[string]cluster.Producer{pb.KindFedQueue: queues.producer,
		pb.KindFedTxn: actors.NewFedTxn, pb.KindUser: actors.NewUser, pb.KindDevice: actors.NewDevice})
	an := &acctNode{t: t, node: tn.node}
	register := func(local string) string {
		hash, err := actors.HashPassword("pw", 4)
		if err != nil {
			t.Fatal(err)
		}
		tn.must(&pb.Register{UserId: user(local), PasswordHash: hash})
		return user(local)
	}
	alice, carol := register("alice"), register("carol")
	room := tn.createRoom("10", alice, &pb.StateEvent{Type: "m.room.join_rules", Content: raw(map[string]string{"join_rule": "public"})})
	other := tn.createRoom("10", carol)
	rs := newRemote(t, "remote.test", "10", room)
	rs.join(tn, "bob")
	bob := rs.user("bob")
	// Wait until alice's user actor knows her room.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(string(an.query(alice, "joined_rooms", "", "").Json), room) {
		if time.Now().After(deadline) {
			t.Fatal("alice's joined rooms never listed the room")
		}
		time.Sleep(10 * time.Millisecond)
	}

	an.update(alice, "presence", "", "", `{"presence":"online","status_msg":"here"}`)
	edu := queues.waitFor(t, "m.presence for alice", func(m proto.Message) bool {
		c, ok := eduOf(m, "remote.test", "m.presence")
		return ok && strings.Contains(fmtJSON(c), alice)
	})
	c, _ := eduOf(edu, "remote.test", "m.presence")
	push := c["push"].([]any)[0].(map[string]any)
	if push["user_id"] != alice || push["presence"] != "online" || push["status_msg"] != "here" || push["last_active_ago"] == nil {
		t.Fatalf("presence EDU: %v", c)
	}

	first := an.plan(alice, "", 0)
	tok := an.done(alice, first.Next, nil, nil)
	firstCarol := an.plan(carol, "", 0)
	tokCarol := an.done(carol, firstCarol.Next, nil, nil)
	// A room bob is not in, claimed to be his (a stale entry): its members
	// hear nothing of him.
	tn.node.Send(&pb.FedPresenceRooms{Origin: "remote.test", Users: []*pb.FedUserRooms{{UserId: bob, RoomIds: []string{other}}}})
	// bob's update; also one claiming to be of another server, which
	// remote.test's actor refuses.
	tn.node.Send(&pb.FedPresenceIn{Origin: "remote.test", Notices: []*pb.PresenceNotice{
		{Sender: bob, Presence: "unavailable", StatusMsg: "away", HasStatusMsg: true, LastActiveTs: time.Now().UnixMilli() - 5000},
		{Sender: "@mallory:evil.test", Presence: "online"},
	}})
	deadline = time.Now().Add(5 * time.Second)
	var next *pb.SyncPlanReply
	for {
		next = an.plan(alice, tok, 500*time.Millisecond)
		if strings.Contains(string(next.Presence), bob) || time.Now().After(deadline) {
			break
		}
	}
	if !strings.Contains(string(next.Presence), `"sender":"`+bob+`"`) || !strings.Contains(string(next.Presence), `"status_msg":"away"`) {
		t.Fatalf("bob's presence not in alice's sync: %s", next.Presence)
	}
	if strings.Contains(string(next.Presence), "mallory") {
		t.Fatalf("another server's user's presence delivered: %s", next.Presence)
	}
	if p := an.plan(carol, tokCarol, 0); strings.Contains(string(p.Presence), bob) {
		t.Fatalf("bob's presence reached carol, who shares no room with him: %s", p.Presence)
	}
}

func fmtJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
