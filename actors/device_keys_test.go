package actors_test

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

// signedDeviceKeys builds device keys for userID/deviceID signed by a fresh
// ed25519 key, as a client would upload them.
func signedDeviceKeys(t testing.TB, userID, deviceID string) []byte {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	obj, _ := json.Marshal(map[string]any{
		"user_id": userID, "device_id": deviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]string{"ed25519:" + deviceID: eventgraph.EncodeBase64(pub),
			"curve25519:" + deviceID: "curvekey"},
	})
	signed, err := eventgraph.SignJSON(obj, userID, "ed25519:"+deviceID, priv)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func (n *acctNode) keysOp(op *pb.DeviceKeysOp) map[string]json.RawMessage {
	n.t.Helper()
	rep := n.must(op).(*pb.KeysReply)
	var out map[string]json.RawMessage
	if err := json.Unmarshal(rep.Json, &out); err != nil {
		n.t.Fatal(err)
	}
	return out
}

func (n *acctNode) loginDevice(userID, deviceID string) {
	n.t.Helper()
	n.update(userID, "add_device", deviceID, "", "")
	n.must(&pb.DeviceLogin{UserId: userID, DeviceId: deviceID, TokenHash: make([]byte, 32)})
}

func otkUpload(ids ...string) []byte {
	keys := map[string]any{}
	for _, id := range ids {
		keys["signed_curve25519:"+id] = map[string]any{"key": "k-" + id}
	}
	b, _ := json.Marshal(map[string]any{"one_time_keys": keys})
	return b
}

func claimID(t *testing.T, n *acctNode, user, dev string) string {
	t.Helper()
	var id string
	_ = json.Unmarshal(n.keysOp(&pb.DeviceKeysOp{UserId: user, DeviceId: dev, Op: "claim", Algorithm: "signed_curve25519"})["key_id"], &id)
	return id
}

func TestKeysUploadChecksDeviceKeys(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	n.loginDevice(alice, "DEV1")
	up := func(dk []byte) *pb.DeviceKeysOp {
		b, _ := json.Marshal(map[string]json.RawMessage{"device_keys": dk})
		return &pb.DeviceKeysOp{UserId: alice, DeviceId: "DEV1", Op: "upload", Body: b}
	}
	n.mustFail(up(signedDeviceKeys(t, alice, "OTHER")), "M_INVALID_PARAM", http.StatusBadRequest)
	n.mustFail(up(signedDeviceKeys(t, "@bob:"+acctServer, "DEV1")), "M_INVALID_PARAM", http.StatusBadRequest)
	// A signature by another key does not verify.
	good := signedDeviceKeys(t, alice, "DEV1")
	var obj map[string]any
	_ = json.Unmarshal(good, &obj)
	obj["algorithms"] = []string{"tampered"}
	bad, _ := json.Marshal(obj)
	n.mustFail(up(bad), "M_INVALID_PARAM", http.StatusBadRequest)

	rep := n.keysOp(up(good))
	if string(rep["changed"]) != "true" {
		t.Fatalf("first upload changed = %s", rep["changed"])
	}
	if rep = n.keysOp(up(good)); string(rep["changed"]) != "false" {
		t.Fatalf("same upload changed = %s", rep["changed"])
	}
	q := n.keysOp(&pb.DeviceKeysOp{UserId: alice, DeviceId: "DEV1", Op: "query"})
	if len(q["device_keys"]) == 0 {
		t.Fatalf("query = %v", q)
	}
	// A one-time key ID reused with another value is refused.
	n.keysOp(&pb.DeviceKeysOp{UserId: alice, DeviceId: "DEV1", Op: "upload", Body: otkUpload("A")})
	clash, _ := json.Marshal(map[string]any{"one_time_keys": map[string]any{"signed_curve25519:A": map[string]any{"key": "other"}}})
	n.mustFail(&pb.DeviceKeysOp{UserId: alice, DeviceId: "DEV1", Op: "upload", Body: clash}, "M_INVALID_PARAM", http.StatusBadRequest)
}

// TestKeysClaimOldestFirst: one-time keys go out in upload order (MSC4225),
// then the fallback key, which is then reported used.
func TestKeysClaimOldestFirst(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	n.loginDevice(alice, "DEV1")
	n.keysOp(&pb.DeviceKeysOp{UserId: alice, DeviceId: "DEV1", Op: "upload", Body: otkUpload("m2", "m1")})
	fb, _ := json.Marshal(map[string]any{"fallback_keys": map[string]any{"signed_curve25519:F": map[string]any{"key": "fb", "fallback": true}}})
	n.keysOp(&pb.DeviceKeysOp{UserId: alice, DeviceId: "DEV1", Op: "upload", Body: fb})
	rep := n.keysOp(&pb.DeviceKeysOp{UserId: alice, DeviceId: "DEV1", Op: "upload", Body: otkUpload("a1")})
	if string(rep["one_time_key_counts"]) != `{"signed_curve25519":3}` {
		t.Fatalf("counts = %s", rep["one_time_key_counts"])
	}
	in := n.keysOp(&pb.DeviceKeysOp{UserId: alice, DeviceId: "DEV1", Op: "inbox"})
	if string(in["unused_fallback_key_types"]) != `["signed_curve25519"]` {
		t.Fatalf("unused fallback = %s", in["unused_fallback_key_types"])
	}
	var got []string
	for range 5 {
		got = append(got, claimID(t, n, alice, "DEV1"))
	}
	want := []string{"signed_curve25519:m1", "signed_curve25519:m2", "signed_curve25519:a1",
		"signed_curve25519:F", "signed_curve25519:F"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("claims = %v, want %v", got, want)
	}
	n.restart()
	in = n.keysOp(&pb.DeviceKeysOp{UserId: alice, DeviceId: "DEV1", Op: "inbox"})
	if string(in["unused_fallback_key_types"]) != `[]` || string(in["one_time_key_counts"]) != `{}` {
		t.Fatalf("after claims: %s %s", in["unused_fallback_key_types"], in["one_time_key_counts"])
	}
	if id := claimID(t, n, alice, "NODEV"); id != "" {
		t.Fatalf("claim from unknown device = %q", id)
	}
}

// TestKeysClaimConcurrentOnce: many concurrent claims on one device's keys
// hand each one-time key out exactly once.
func TestKeysClaimConcurrentOnce(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	n.loginDevice(alice, "DEV1")
	const keys, claims = 200, 300
	ids := make([]string, keys)
	for i := range ids {
		ids[i] = fmt.Sprintf("k%04d", i)
	}
	n.keysOp(&pb.DeviceKeysOp{UserId: alice, DeviceId: "DEV1", Op: "upload", Body: otkUpload(ids...)})
	var mu sync.Mutex
	seen := map[string]int{}
	empty := 0
	var wg sync.WaitGroup
	for range claims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := n.req(&pb.DeviceKeysOp{UserId: alice, DeviceId: "DEV1", Op: "claim", Algorithm: "signed_curve25519"})
			if err != nil {
				t.Error(err)
				return
			}
			var rep struct {
				KeyID string `json:"key_id"`
			}
			_ = json.Unmarshal(res.(*pb.KeysReply).Json, &rep)
			mu.Lock()
			defer mu.Unlock()
			if rep.KeyID == "" {
				empty++
			} else {
				seen[rep.KeyID]++
			}
		}()
	}
	wg.Wait()
	if len(seen) != keys || empty != claims-keys {
		t.Fatalf("%d distinct keys handed out, %d empty; want %d and %d", len(seen), empty, keys, claims-keys)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("key %s handed out %d times", id, c)
		}
	}
}

func inboxEvents(t *testing.T, rep map[string]json.RawMessage) ([]string, uint64) {
	t.Helper()
	var evs []struct {
		Content struct {
			N string `json:"n"`
		} `json:"content"`
	}
	if err := json.Unmarshal(rep["events"], &evs); err != nil {
		t.Fatal(err)
	}
	var last uint64
	_ = json.Unmarshal(rep["last"], &last)
	var out []string
	for _, e := range evs {
		out = append(out, e.Content.N)
	}
	return out, last
}

// TestToDeviceDeliverAckRestart: a message is stored once per sending
// device and transaction, survives a restart until acknowledged, and is
// gone after.
func TestToDeviceDeliverAckRestart(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	bob := n.register("bob", "pw")
	n.loginDevice(bob, "BOBDEV")
	send := func(txn, val string) {
		body, _ := json.Marshal(map[string]any{"type": "m.test", "sender": alice, "content": map[string]string{"n": val}})
		n.keysOp(&pb.DeviceKeysOp{UserId: bob, DeviceId: "BOBDEV", Op: "deliver", Body: body,
			Sender: alice, SenderDevice: "ALICEDEV", TxnId: txn})
	}
	send("t1", "one")
	send("t1", "one") // a retry
	send("t2", "two")
	inbox := func(ack uint64) ([]string, uint64) {
		return inboxEvents(t, n.keysOp(&pb.DeviceKeysOp{UserId: bob, DeviceId: "BOBDEV", Op: "inbox", Pos: ack, Limit: 100}))
	}
	got, last := inbox(0)
	if fmt.Sprint(got) != "[one two]" {
		t.Fatalf("inbox = %v", got)
	}
	n.restart()
	if got, _ = inbox(0); fmt.Sprint(got) != "[one two]" {
		t.Fatalf("after restart inbox = %v", got)
	}
	if got, _ = inbox(last); len(got) != 0 {
		t.Fatalf("after ack inbox = %v", got)
	}
	send("t1", "one") // a retry after delivery is still a retry
	send("t3", "three")
	n.restart()
	if got, _ = inbox(last); fmt.Sprint(got) != "[three]" {
		t.Fatalf("after ack and restart inbox = %v", got)
	}
}

// TestToDeviceWakesLongPoll: a parked sync of the target device returns when
// a message arrives.
func TestToDeviceWakesLongPoll(t *testing.T) {
	n := startAcctNode(t)
	bob := n.register("bob", "pw")
	n.loginDevice(bob, "D")
	p := n.plan(bob, "", 0)
	tok := n.done(bob, p.Next, nil, nil)
	latest := func() uint64 {
		var l uint64
		_ = json.Unmarshal(n.keysOp(&pb.DeviceKeysOp{UserId: bob, DeviceId: "D", Op: "inbox"})["latest"], &l)
		return l
	}
	seen := latest()
	done := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		_, _ = n.req(&pb.SyncPlan{UserId: bob, DeviceId: "D", Since: tok, TimeoutMs: 10_000, ToDeviceSeen: seen})
		done <- time.Since(start)
	}()
	time.Sleep(200 * time.Millisecond)
	body, _ := json.Marshal(map[string]any{"type": "m.test", "sender": bob, "content": map[string]string{"n": "x"}})
	n.keysOp(&pb.DeviceKeysOp{UserId: bob, DeviceId: "D", Op: "deliver", Body: body, Sender: bob, SenderDevice: "E", TxnId: "t"})
	select {
	case d := <-done:
		if d > 5*time.Second {
			t.Fatalf("long-poll took %v", d)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("long-poll not woken by a to-device message")
	}
	// A sync that saw less than the device has does not wait at all.
	start := time.Now()
	n.must(&pb.SyncPlan{UserId: bob, DeviceId: "D", Since: tok, TimeoutMs: 5_000, ToDeviceSeen: seen})
	if time.Since(start) > 2*time.Second {
		t.Fatal("sync waited although messages were pending")
	}
}
