package actors_test

import (
	"crypto/ed25519"
	"encoding/json"
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

// fedCapture stands in for the outbound federation queues and for a room
// with members on two other servers.
type fedCapture struct {
	mu   sync.Mutex
	sent []*pb.FedEnqueue
}

func (c *fedCapture) queue(env *actors.Env) actor.Actor {
	return actor.ReceiveFunc(func(ctx actor.Context) {
		if m, ok := ctx.Message().(*pb.FedEnqueue); ok {
			c.mu.Lock()
			c.sent = append(c.sent, proto.Clone(m).(*pb.FedEnqueue))
			c.mu.Unlock()
		}
	})
}

func remoteRoom(env *actors.Env) actor.Actor {
	return actor.ReceiveFunc(func(ctx actor.Context) {
		if m, ok := ctx.Message().(*pb.RoomQuery); ok && m.Kind == "joined_members" {
			ctx.Respond(&pb.RoomQueryReply{Json: []byte(`{"joined":{"@pub:acct.test":{},"@r:remote.test":{},"@s:other.test":{},"@t:other.test":{}}}`)})
		}
	})
}

// wait returns the EDUs sent to dest once there are n of them.
func (c *fedCapture) wait(t *testing.T, dest string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		var out []map[string]any
		for _, m := range c.sent {
			if m.Destination != dest {
				continue
			}
			for _, e := range m.Edus {
				var content map[string]any
				if err := json.Unmarshal(e.Content, &content); err != nil {
					t.Fatal(err)
				}
				content["edu_type"] = e.EduType
				out = append(out, content)
			}
		}
		c.mu.Unlock()
		if len(out) >= n || time.Now().After(deadline) {
			if len(out) != n {
				t.Fatalf("%s got %d EDUs, want %d: %v", dest, len(out), n, out)
			}
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A local user's device changes go to each other server sharing a room as
// m.device_list_update EDUs in one stream (stream_id, prev_id), deleted
// devices included, and cross-signing keys as m.signing_key_update.
func TestDeviceListPublishing(t *testing.T) {
	capture := &fedCapture{}
	n := &acctNode{t: t, dir: t.TempDir()}
	node, err := cluster.Start(cluster.Config{
		DataDir:    n.dir,
		Partitions: 2,
		Kinds: map[string]cluster.Producer{pb.KindUser: actors.NewUser, pb.KindDevice: actors.NewDevice,
			pb.KindRoom: remoteRoom, pb.KindFedQueue: capture.queue},
		Server: &actors.ServerIdentity{ServerName: acctServer, KeyID: "ed25519:t",
			PrivateKey: ed25519.NewKeyFromSeed(make([]byte, 32))},
		RequestTimeout: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	n.node = node
	t.Cleanup(n.stop)

	u := n.register("pub", "pw")
	n.node.Send(&pb.RoomNotice{UserId: u, RoomId: "!r:acct.test", Pos: 1, Membership: "join"})
	n.loginDevice(u, "D1")
	n.must(&pb.DeviceKeysOp{UserId: u, DeviceId: "D1", Op: "upload",
		Body: []byte(`{"device_keys":` + string(signedDeviceKeys(t, u, "D1")) + `}`)})
	publish := func() { n.must(&pb.UserKeysOp{UserId: u, Op: "fed_publish"}) }
	publish()
	edus := capture.wait(t, "remote.test", 1)
	first := edus[0]
	if first["edu_type"] != "m.device_list_update" || first["user_id"] != u || first["device_id"] != "D1" ||
		first["stream_id"] != float64(1) || first["prev_id"] != nil || first["keys"] == nil {
		t.Fatalf("first EDU: %v", first)
	}
	capture.wait(t, "other.test", 1) // one copy per server, not per member

	// Nothing changed: nothing sent.
	publish()
	n.loginDevice(u, "D2")
	n.must(&pb.DeviceUpdate{UserId: u, DeviceId: "D2", Kind: "display_name", DisplayName: "Laptop"})
	n.must(&pb.DeviceKeysOp{UserId: u, DeviceId: "D2", Op: "upload",
		Body: []byte(`{"device_keys":` + string(signedDeviceKeys(t, u, "D2")) + `}`)})
	publish()
	second := capture.wait(t, "remote.test", 2)[1]
	if second["device_id"] != "D2" || second["stream_id"] != float64(2) || second["device_display_name"] != "Laptop" {
		t.Fatalf("second EDU: %v", second)
	}
	if prev, _ := second["prev_id"].([]any); len(prev) != 1 || prev[0] != float64(1) {
		t.Fatalf("second EDU prev_id: %v", second["prev_id"])
	}
	if keys, _ := second["keys"].(map[string]any); keys == nil || keys["unsigned"] != nil || keys["device_id"] != "D2" {
		t.Fatalf("second EDU keys: %v", second["keys"])
	}

	n.update(u, "remove_device", "D2", "", "")
	publish()
	third := capture.wait(t, "remote.test", 3)[2]
	if third["device_id"] != "D2" || third["deleted"] != true || third["stream_id"] != float64(3) {
		t.Fatalf("deletion EDU: %v", third)
	}
	var stream struct {
		StreamID uint64 `json:"stream_id"`
	}
	if err := json.Unmarshal(n.must(&pb.UserKeysOp{UserId: u, Op: "fed_stream"}).(*pb.KeysReply).Json, &stream); err != nil || stream.StreamID != 3 {
		t.Fatalf("fed_stream = %d (%v)", stream.StreamID, err)
	}

	// Cross-signing keys.
	master := ed25519.NewKeyFromSeed(make([]byte, 32))
	mpub := eventgraph.EncodeBase64(master.Public().(ed25519.PublicKey))
	xs, _ := json.Marshal(map[string]any{"master_key": map[string]any{"user_id": u, "usage": []string{"master"},
		"keys": map[string]string{"ed25519:" + mpub: mpub}}})
	n.must(&pb.UserKeysOp{UserId: u, Op: "xsign_upload", Body: xs})
	publish()
	fourth := capture.wait(t, "remote.test", 4)[3]
	if fourth["edu_type"] != "m.signing_key_update" || fourth["user_id"] != u || fourth["master_key"] == nil {
		t.Fatalf("signing key EDU: %v", fourth)
	}

	// The remote ops are for remote users only, and the publishing ones
	// for local users only.
	n.mustFail(&pb.UserKeysOp{UserId: u, Op: "remote_get"}, "M_INVALID_PARAM", 400)
	n.mustFail(&pb.UserKeysOp{UserId: "@r:remote.test", Op: "fed_publish"}, "M_INVALID_PARAM", 400)
}
