package actors_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster"
	"github.com/shoal-chat/shoal/eventgraph"
)

const testServer = "test.local"

// noticeLog is a stand-in user actor kind that records the RoomNotices it
// receives, so tests can check what rooms tell their members.
type noticeLog struct {
	mu      sync.Mutex
	notices []*pb.RoomNotice
}

func (l *noticeLog) producer(env *actors.Env) actor.Actor {
	return actor.ReceiveFunc(func(ctx actor.Context) {
		if n, ok := ctx.Message().(*pb.RoomNotice); ok {
			l.mu.Lock()
			l.notices = append(l.notices, proto.Clone(n).(*pb.RoomNotice))
			l.mu.Unlock()
		}
	})
}

// waitFor polls the log until pred holds for some notice.
func (l *noticeLog) waitFor(t *testing.T, what string, pred func(*pb.RoomNotice) bool) *pb.RoomNotice {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		for _, n := range l.notices {
			if pred(n) {
				l.mu.Unlock()
				return n
			}
		}
		l.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no room notice %s", what)
	return nil
}

type testNode struct {
	t       testing.TB
	dir     string
	node    *cluster.Node
	server  *actors.ServerIdentity
	notices *noticeLog
}

func startNode(t testing.TB) *testNode {
	t.Helper()
	tn := &testNode{t: t, dir: t.TempDir(), notices: &noticeLog{},
		server: &actors.ServerIdentity{ServerName: testServer, KeyID: "ed25519:test",
			PrivateKey: ed25519.NewKeyFromSeed(make([]byte, 32))}}
	tn.start()
	t.Cleanup(tn.stop)
	return tn
}

func (tn *testNode) start() {
	tn.t.Helper()
	n, err := cluster.Start(cluster.Config{
		DataDir:    tn.dir,
		Partitions: 4,
		Server:     tn.server,
		Kinds: map[string]cluster.Producer{
			pb.KindRoom:      actors.NewRoom,
			pb.KindAlias:     actors.NewAlias,
			pb.KindDirectory: actors.NewDirectory,
			pb.KindCerts:     actors.NewCerts,
			pb.KindUserDir:   actors.NewUserDir,
			pb.KindUser:      tn.notices.producer,
		},
	})
	if err != nil {
		tn.t.Fatal(err)
	}
	tn.node = n
}

func (tn *testNode) stop() {
	if tn.node == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tn.node.Stop(ctx); err != nil {
		tn.t.Errorf("stop node: %v", err)
	}
	tn.node = nil
}

// restart stops the node and starts it again on the same files.
func (tn *testNode) restart() {
	tn.t.Helper()
	tn.stop()
	tn.start()
}

func (tn *testNode) request(msg pb.Targeted) (proto.Message, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return tn.node.Request(ctx, msg)
}

func (tn *testNode) must(msg pb.Targeted) proto.Message {
	tn.t.Helper()
	res, err := tn.request(msg)
	if err != nil {
		tn.t.Fatalf("%T: %v", msg, err)
	}
	return res
}

// mustFail asserts that msg fails with errcode and status.
func (tn *testNode) mustFail(msg pb.Targeted, errcode string, status int) {
	tn.t.Helper()
	_, err := tn.request(msg)
	var me *actors.MatrixError
	if !errors.As(err, &me) {
		tn.t.Fatalf("%T: want %s, got %v", msg, errcode, err)
	}
	if me.ErrCode != errcode || me.Status != status {
		tn.t.Fatalf("%T: want %s (%d), got %s (%d): %s", msg, errcode, status, me.ErrCode, me.Status, me.Message)
	}
}

func user(local string) string { return "@" + local + ":" + testServer }

func raw(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// createRoom creates a room of version v the way the gateway does: the
// create content (with creator before v11), power levels with the creator
// at 100 (before v12), then the given extra state.
func (tn *testNode) createRoom(v, creator string, extra ...*pb.StateEvent) string {
	tn.t.Helper()
	rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(v))
	if !ok {
		tn.t.Fatalf("room version %s", v)
	}
	content := map[string]any{"room_version": v}
	if !rv.ImplicitCreator {
		content["creator"] = creator
	}
	pl := map[string]any{"users": map[string]int{}, "users_default": 0, "events_default": 0, "state_default": 50,
		"ban": 50, "kick": 50, "redact": 50, "invite": 0,
		"events": map[string]int{"m.room.power_levels": 100, "m.room.history_visibility": 100}}
	if !rv.PrivilegedCreators {
		pl["users"] = map[string]int{creator: 100}
	}
	initial := append([]*pb.StateEvent{{Type: "m.room.power_levels", Content: raw(pl)},
		{Type: "m.room.join_rules", Content: raw(map[string]string{"join_rule": "invite"})},
		{Type: "m.room.history_visibility", Content: raw(map[string]string{"history_visibility": "shared"})}}, extra...)
	req := &pb.CreateRoom{RoomVersion: v, Creator: creator, Initial: initial,
		CreatorProfile: raw(map[string]string{"displayname": "Creator"})}
	if rv.RoomIDFromCreateEvent {
		pdu, id, err := actors.BuildCreateEvent(tn.server, rv, "", creator, raw(content), time.Now().UnixMilli())
		if err != nil {
			tn.t.Fatal(err)
		}
		if req.RoomId, err = actors.RoomIDForCreateEvent(id); err != nil {
			tn.t.Fatal(err)
		}
		req.CreatePdu = pdu
	} else {
		req.RoomId = actors.NewRoomID(testServer)
		req.CreateContent = raw(content)
	}
	rep := tn.must(req).(*pb.CreateRoomReply)
	if rep.RoomId != req.RoomId {
		tn.t.Fatalf("created %s, want %s", rep.RoomId, req.RoomId)
	}
	return rep.RoomId
}

func (tn *testNode) send(room, sender, text string) string {
	tn.t.Helper()
	rep := tn.must(&pb.SendEvent{RoomId: room, Sender: sender, Type: "m.room.message",
		Content: raw(map[string]string{"msgtype": "m.text", "body": text})}).(*pb.SendEventReply)
	return rep.EventId
}

func (tn *testNode) member(room, sender, target, membership string) string {
	tn.t.Helper()
	rep := tn.must(&pb.Membership{RoomId: room, Sender: sender, Target: target, Membership: membership}).(*pb.SendEventReply)
	return rep.EventId
}

func (tn *testNode) setState(room, sender, typ, key string, content any) string {
	tn.t.Helper()
	rep := tn.must(&pb.SendEvent{RoomId: room, Sender: sender, Type: typ, IsState: true, StateKey: key,
		Content: raw(content)}).(*pb.SendEventReply)
	return rep.EventId
}

// query runs a RoomQuery and decodes its JSON into out.
func (tn *testNode) query(q *pb.RoomQuery, out any) {
	tn.t.Helper()
	rep := tn.must(q).(*pb.RoomQueryReply)
	if err := json.Unmarshal(rep.Json, out); err != nil {
		tn.t.Fatalf("decode %s: %v: %s", q.Kind, err, rep.Json)
	}
}

type clientEvent struct {
	EventID  string          `json:"event_id"`
	Type     string          `json:"type"`
	Sender   string          `json:"sender"`
	RoomID   string          `json:"room_id"`
	StateKey *string         `json:"state_key"`
	Content  json.RawMessage `json:"content"`
	Unsigned map[string]any  `json:"unsigned"`
}

func (e clientEvent) body() string {
	var c struct {
		Body string `json:"body"`
	}
	_ = json.Unmarshal(e.Content, &c)
	return c.Body
}

type messagesResp struct {
	Chunk []clientEvent `json:"chunk"`
	Start string        `json:"start"`
	End   string        `json:"end"`
}

func bodies(evs []clientEvent) []string {
	var out []string
	for _, e := range evs {
		if e.Type == "m.room.message" {
			out = append(out, e.body())
		}
	}
	return out
}

func (tn *testNode) syncRoom(req *pb.SyncRoom) (*pb.SyncRoomReply, map[string]json.RawMessage) {
	tn.t.Helper()
	rep := tn.must(req).(*pb.SyncRoomReply)
	var obj map[string]json.RawMessage
	if len(rep.Json) > 0 {
		if err := json.Unmarshal(rep.Json, &obj); err != nil {
			tn.t.Fatalf("decode sync room: %v", err)
		}
	}
	return rep, obj
}
