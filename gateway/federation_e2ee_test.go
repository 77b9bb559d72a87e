package gateway_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/fedclient"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// signedDo sends a request signed by id (as destination dest) with a JSON
// body straight to a node's TLS listener and returns status and raw body.
func signedDo(t *testing.T, fed *shoaltest.Federation, node *shoaltest.Node, id *actors.ServerIdentity, method, uri string, body any) (int, []byte) {
	t.Helper()
	var content []byte
	if body != nil {
		content, _ = json.Marshal(body)
	}
	auth, err := fedclient.SignRequest(id, method, uri, node.ServerName(), content)
	if err != nil {
		t.Fatal(err)
	}
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fed.CA.Pool(), ServerName: node.ServerName()}}, Timeout: 30 * time.Second}
	defer cli.CloseIdleConnections()
	req, _ := http.NewRequest(method, "https://"+node.TLSAddrs[0]+uri, bytes.NewReader(content))
	req.Header.Set("Authorization", auth)
	req.Header.Set("Content-Type", "application/json")
	resp, err := cli.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

// uploadE2EE gives a client signed device keys and one-time keys in two
// uploads (the second upload's key IDs sort first, so "oldest first" is
// not "smallest ID first"), and returns the device keys.
func uploadE2EE(t *testing.T, cli *mautrix.Client) *mautrix.DeviceKeys {
	t.Helper()
	ctx := context.Background()
	dk, _ := clientDeviceKeys(t, cli)
	if _, err := cli.UploadKeys(ctx, &mautrix.ReqUploadKeys{DeviceKeys: dk, OneTimeKeys: map[id.KeyID]mautrix.OneTimeKey{
		"signed_curve25519:MMM": {Key: "m"}, "signed_curve25519:NNN": {Key: "n"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UploadKeys(ctx, &mautrix.ReqUploadKeys{OneTimeKeys: map[id.KeyID]mautrix.OneTimeKey{
		"signed_curve25519:AAA": {Key: "a"}}}); err != nil {
		t.Fatal(err)
	}
	return dk
}

// canon re-encodes JSON so that objects compare independently of key order.
func canon(t *testing.T, v any) string {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var x any
	if err := json.Unmarshal(raw, &x); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(x)
	return string(out)
}

// A peer reads a local user's devices and keys and claims one-time keys,
// oldest upload first; it cannot ask for users of other servers, and the
// answers are what the user's client uploaded.
func TestFederationE2EEInbound(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startFakePeer(t, fed, "c.test")
	ctx := context.Background()
	alice := a.Register("alice")
	if err := alice.SetDeviceInfo(ctx, alice.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "Alice's phone"}); err != nil {
		t.Fatal(err)
	}
	dk := uploadE2EE(t, alice)
	masterPriv, sskPriv, uskPriv := newKey(), newKey(), newKey()
	xs := crossKeys(t, alice.UserID, masterPriv, sskPriv, uskPriv)
	if st, body := e2eeRaw(t, a, alice.AccessToken, "POST", "/_matrix/client/v3/keys/device_signing/upload", xs); st != 200 {
		t.Fatalf("cross-signing upload: %d %v", st, body)
	}

	// keys/query: the device keys as uploaded plus the display name; the
	// master and self-signing keys, never the user-signing key.
	st, raw := signedDo(t, fed, a, peer.id, "POST", "/_matrix/federation/v1/user/keys/query",
		map[string]any{"device_keys": map[string]any{string(alice.UserID): []string{}, "@x:c.test": []string{}}})
	if st != http.StatusOK {
		t.Fatalf("keys/query: %d %s", st, raw)
	}
	var q struct {
		DeviceKeys      map[string]map[string]map[string]json.RawMessage `json:"device_keys"`
		MasterKeys      map[string]json.RawMessage                       `json:"master_keys"`
		SelfSigningKeys map[string]json.RawMessage                       `json:"self_signing_keys"`
		UserSigningKeys map[string]json.RawMessage                       `json:"user_signing_keys"`
	}
	if err := json.Unmarshal(raw, &q); err != nil {
		t.Fatal(err)
	}
	got := q.DeviceKeys[string(alice.UserID)][string(alice.DeviceID)]
	if got == nil {
		t.Fatalf("keys/query: no device: %s", raw)
	}
	var unsigned map[string]string
	_ = json.Unmarshal(got["unsigned"], &unsigned)
	if unsigned["device_display_name"] != "Alice's phone" {
		t.Fatalf("keys/query: unsigned %v", unsigned)
	}
	delete(got, "unsigned")
	if canon(t, got) != canon(t, dk) {
		t.Fatalf("keys/query: device keys\n%s\nwant\n%s", canon(t, got), canon(t, dk))
	}
	if _, ok := q.DeviceKeys["@x:c.test"]; ok {
		t.Fatalf("keys/query answered for another server's user: %s", raw)
	}
	if canon(t, q.MasterKeys[string(alice.UserID)]) != canon(t, xs["master_key"]) ||
		canon(t, q.SelfSigningKeys[string(alice.UserID)]) != canon(t, xs["self_signing_key"]) {
		t.Fatalf("keys/query: cross-signing keys %s", raw)
	}
	if len(q.UserSigningKeys) != 0 {
		t.Fatalf("keys/query: user-signing key given to another server: %s", raw)
	}
	// Only the devices asked for.
	st, raw = signedDo(t, fed, a, peer.id, "POST", "/_matrix/federation/v1/user/keys/query",
		map[string]any{"device_keys": map[string]any{string(alice.UserID): []string{"OTHER"}}})
	if err := json.Unmarshal(raw, &q); st != http.StatusOK || err != nil || len(q.DeviceKeys[string(alice.UserID)]) != 0 {
		t.Fatalf("keys/query for another device: %d %s", st, raw)
	}

	// user/devices: the same keys, the name, a stream ID, the master and
	// self-signing keys.
	st, raw = signedDo(t, fed, a, peer.id, "GET", "/_matrix/federation/v1/user/devices/"+url.PathEscape(string(alice.UserID)), nil)
	if st != http.StatusOK {
		t.Fatalf("user/devices: %d %s", st, raw)
	}
	var devs struct {
		UserID   string `json:"user_id"`
		StreamID *int64 `json:"stream_id"`
		Devices  []struct {
			DeviceID    string          `json:"device_id"`
			Keys        json.RawMessage `json:"keys"`
			DisplayName string          `json:"device_display_name"`
		} `json:"devices"`
		MasterKey      json.RawMessage `json:"master_key"`
		SelfSigningKey json.RawMessage `json:"self_signing_key"`
	}
	if err := json.Unmarshal(raw, &devs); err != nil {
		t.Fatal(err)
	}
	if devs.UserID != string(alice.UserID) || devs.StreamID == nil || len(devs.Devices) != 1 ||
		devs.Devices[0].DeviceID != string(alice.DeviceID) || devs.Devices[0].DisplayName != "Alice's phone" ||
		canon(t, devs.Devices[0].Keys) != canon(t, dk) {
		t.Fatalf("user/devices: %s", raw)
	}
	if canon(t, devs.MasterKey) != canon(t, xs["master_key"]) || canon(t, devs.SelfSigningKey) != canon(t, xs["self_signing_key"]) {
		t.Fatalf("user/devices: cross-signing keys %s", raw)
	}
	if st, raw = signedDo(t, fed, a, peer.id, "GET", "/_matrix/federation/v1/user/devices/"+url.PathEscape("@x:c.test"), nil); st != http.StatusForbidden {
		t.Fatalf("user/devices of a remote user: %d %s", st, raw)
	}
	if st, raw = signedDo(t, fed, a, peer.id, "GET", "/_matrix/federation/v1/user/devices/"+url.PathEscape("@nobody:a.test"), nil); st != http.StatusNotFound {
		t.Fatalf("user/devices of an unknown user: %d %s", st, raw)
	}

	// keys/claim: the first upload's keys go first, then the second's.
	claim := func() string {
		t.Helper()
		st, raw := signedDo(t, fed, a, peer.id, "POST", "/_matrix/federation/v1/user/keys/claim",
			map[string]any{"one_time_keys": map[string]any{string(alice.UserID): map[string]string{string(alice.DeviceID): "signed_curve25519"}}})
		if st != http.StatusOK {
			t.Fatalf("keys/claim: %d %s", st, raw)
		}
		var c struct {
			OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		for k := range c.OneTimeKeys[string(alice.UserID)][string(alice.DeviceID)] {
			return k
		}
		return ""
	}
	for i, want := range []string{"signed_curve25519:MMM", "signed_curve25519:NNN", "signed_curve25519:AAA", ""} {
		if k := claim(); k != want {
			t.Fatalf("claim %d = %q, want %q", i, k, want)
		}
	}

	// Unsigned requests and oversized ones are refused.
	if st, _ := fedGet(t, fed, a, "/_matrix/federation/v1/user/devices/"+url.PathEscape(string(alice.UserID)), ""); st != http.StatusUnauthorized {
		t.Fatalf("unsigned user/devices: %d", st)
	}
	many := map[string]any{}
	for i := range 10_001 {
		many["@u"+strconv.Itoa(i)+":a.test"] = []string{}
	}
	if st, raw = signedDo(t, fed, a, peer.id, "POST", "/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": many}); st != http.StatusBadRequest {
		t.Fatalf("too many users: %d %s", st, raw)
	}
}

// A user on a.test reads the device keys of a user on b.test and claims one
// of its one-time keys through a.test's client API, over real federation;
// a server that cannot be reached is listed under failures.
func TestFederationE2EERemoteQueryClaim(t *testing.T) {
	_, a, b := twoNodes(t)
	ctx := context.Background()
	bob := b.Register("bob")
	if err := bob.SetDeviceInfo(ctx, bob.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "Bob's laptop"}); err != nil {
		t.Fatal(err)
	}
	dk := uploadE2EE(t, bob)
	xs := crossKeys(t, bob.UserID, newKey(), newKey(), newKey())
	if st, body := e2eeRaw(t, b, bob.AccessToken, "POST", "/_matrix/client/v3/keys/device_signing/upload", xs); st != 200 {
		t.Fatalf("cross-signing upload: %d %v", st, body)
	}
	alice := a.Register("alice")
	aliceKeys := uploadE2EE(t, alice)

	st, body := e2eeRaw(t, a, alice.AccessToken, "POST", "/_matrix/client/v3/keys/query", map[string]any{
		"device_keys": map[string]any{string(bob.UserID): []string{}, string(alice.UserID): []string{}, "@x:nowhere.test": []string{}},
		"timeout":     5000})
	if st != 200 {
		t.Fatalf("keys/query: %d %v", st, body)
	}
	var devices map[string]map[string]map[string]json.RawMessage
	_ = json.Unmarshal(body["device_keys"], &devices)
	got := devices[string(bob.UserID)][string(bob.DeviceID)]
	var unsigned map[string]string
	_ = json.Unmarshal(got["unsigned"], &unsigned)
	delete(got, "unsigned")
	if canon(t, got) != canon(t, dk) || unsigned["device_display_name"] != "Bob's laptop" {
		t.Fatalf("bob's keys through federation: %s (unsigned %v)", canon(t, got), unsigned)
	}
	mine := devices[string(alice.UserID)][string(alice.DeviceID)]
	delete(mine, "unsigned")
	if canon(t, mine) != canon(t, aliceKeys) {
		t.Fatalf("local keys in a mixed query: %v", devices[string(alice.UserID)])
	}
	var master map[string]json.RawMessage
	_ = json.Unmarshal(body["master_keys"], &master)
	if canon(t, master[string(bob.UserID)]) != canon(t, xs["master_key"]) {
		t.Fatalf("bob's master key through federation: %s", body["master_keys"])
	}
	var failures map[string]json.RawMessage
	_ = json.Unmarshal(body["failures"], &failures)
	if _, ok := failures["nowhere.test"]; !ok || len(failures) != 1 {
		t.Fatalf("failures = %s", body["failures"])
	}

	// Claims come oldest upload first, each key once.
	for i, want := range []id.KeyID{"signed_curve25519:MMM", "signed_curve25519:NNN"} {
		c, err := alice.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{
			bob.UserID: {bob.DeviceID: id.KeyAlgorithmSignedCurve25519}}})
		if err != nil {
			t.Fatal(err)
		}
		var k id.KeyID
		for k = range c.OneTimeKeys[bob.UserID][bob.DeviceID] {
		}
		if k != want {
			t.Fatalf("claim %d = %q, want %q (%+v)", i, k, want, c)
		}
	}
	st, body = e2eeRaw(t, a, alice.AccessToken, "POST", "/_matrix/client/v3/keys/claim", map[string]any{
		"one_time_keys": map[string]any{"@x:nowhere.test": map[string]string{"D": "signed_curve25519"}}, "timeout": 3000})
	_ = json.Unmarshal(body["failures"], &failures)
	if _, ok := failures["nowhere.test"]; st != 200 || !ok {
		t.Fatalf("claim from an unreachable server: %d %v", st, body)
	}
}

// keysPeer is a fake remote server that answers user/keys/query for its
// user @carol with fixed device keys, counting the queries.
type keysPeer struct {
	*fakePeer
	queries atomic.Int32
	devices atomic.Value // map[string]any: device ID → keys
}

func startKeysPeer(t *testing.T, fed *shoaltest.Federation, name string) *keysPeer {
	t.Helper()
	kp := &keysPeer{}
	kp.devices.Store(map[string]any{})
	kp.fakePeer = startFakePeerWith(t, fed, name, func(_ *fakePeer, w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_matrix/federation/v1/user/keys/query" {
			http.Error(w, `{"errcode":"M_UNRECOGNIZED","error":"no"}`, http.StatusNotFound)
			return
		}
		kp.queries.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"device_keys": map[string]any{"@carol:" + name: kp.devices.Load()}})
	})
	return kp
}

// peerDeviceKeys makes signed device keys of a user of a fake peer.
func peerDeviceKeys(t *testing.T, userID, deviceID string) map[string]any {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	edID := "ed25519:" + deviceID
	raw := signObj(t, map[string]any{"user_id": userID, "device_id": deviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
		"keys":       map[string]string{edID: eventgraph.EncodeBase64(pub)}}, userID, edID, priv)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return out
}

// A remote user's device list is asked of their server once and then
// served from the cache, until the cache is dropped.
func TestFederationE2EEKeysCache(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startKeysPeer(t, fed, "c.test")
	peer.devices.Store(map[string]any{"CDEV": peerDeviceKeys(t, "@carol:c.test", "CDEV")})
	alice := a.Register("alice")
	query := func() map[string]json.RawMessage {
		t.Helper()
		st, body := e2eeRaw(t, a, alice.AccessToken, "POST", "/_matrix/client/v3/keys/query",
			map[string]any{"device_keys": map[string]any{"@carol:c.test": []string{}}})
		if st != 200 {
			t.Fatalf("keys/query: %d %v", st, body)
		}
		var devices map[string]map[string]json.RawMessage
		_ = json.Unmarshal(body["device_keys"], &devices)
		return devices["@carol:c.test"]
	}
	if d := query(); len(d) != 1 || d["CDEV"] == nil {
		t.Fatalf("first query: %v", d)
	}
	// Carol's server now lists a second device, but nobody said so: the
	// cached list answers.
	peer.devices.Store(map[string]any{"CDEV": peerDeviceKeys(t, "@carol:c.test", "CDEV"), "CDEV2": peerDeviceKeys(t, "@carol:c.test", "CDEV2")})
	if d := query(); len(d) != 1 {
		t.Fatalf("second query not from the cache: %v", d)
	}
	if n := peer.queries.Load(); n != 1 {
		t.Fatalf("remote queried %d times, want 1", n)
	}
	// Device keys a server answers for another user are dropped.
	peer.devices.Store(map[string]any{"EVIL": peerDeviceKeys(t, "@dave:c.test", "EVIL")})
	st, body := e2eeRaw(t, a, alice.AccessToken, "POST", "/_matrix/client/v3/keys/query",
		map[string]any{"device_keys": map[string]any{"@carol2:c.test": []string{}}})
	var devices map[string]map[string]json.RawMessage
	_ = json.Unmarshal(body["device_keys"], &devices)
	if st != 200 || len(devices["@carol2:c.test"]) != 0 {
		t.Fatalf("foreign keys accepted: %d %v", st, devices)
	}
}

// sendEDUs sends a transaction of EDUs from a fake peer to a node.
func sendEDUs(t *testing.T, fed *shoaltest.Federation, node *shoaltest.Node, peer *fakePeer, txnID string, edus ...map[string]any) {
	t.Helper()
	st, raw := signedDo(t, fed, node, peer.id, "PUT", "/_matrix/federation/v1/send/"+txnID, map[string]any{
		"origin": peer.id.ServerName, "origin_server_ts": time.Now().UnixMilli(), "pdus": []any{}, "edus": edus})
	if st != http.StatusOK {
		t.Fatalf("send %s: %d %s", txnID, st, raw)
	}
}

// To-device messages from another server reach the local devices named
// ("*": all of them), once per message ID, and only from the sender's own
// server.
func TestFederationE2EEToDeviceIn(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startFakePeer(t, fed, "c.test")
	alice := a.Register("alice")
	phone := loginAgain(t, a, "alice")
	tok := syncOnce(t, alice, "", 0).NextBatch
	phoneTok := syncOnce(t, phone, "", 0).NextBatch
	toDevice := func(msgID, sender string, dev id.DeviceID, n int) map[string]any {
		return map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{
			"sender": sender, "type": "m.test", "message_id": msgID,
			"messages": map[string]any{string(alice.UserID): map[string]any{string(dev): map[string]any{"n": n}}}}}
	}
	sendEDUs(t, fed, a, peer, "t1", toDevice("m1", "@carol:c.test", alice.DeviceID, 1))
	// The same message again (a retried EDU), one from a sender that is not
	// c.test's, and one to every device.
	sendEDUs(t, fed, a, peer, "t2", toDevice("m1", "@carol:c.test", alice.DeviceID, 1),
		toDevice("m2", "@eve:a.test", alice.DeviceID, 2), toDevice("m3", "@carol:c.test", "*", 3))
	s := syncOnce(t, alice, tok, 0)
	var got []float64
	for _, ev := range s.ToDevice.Events {
		if ev.Sender != "@carol:c.test" || ev.Type.Type != "m.test" {
			t.Fatalf("to-device event %+v", ev)
		}
		got = append(got, ev.Content.Raw["n"].(float64))
	}
	if len(got) != 2 || got[0] != 1 || got[1] != 3 {
		t.Fatalf("alice's device got %v, want [1 3]", got)
	}
	s = syncOnce(t, phone, phoneTok, 0)
	if len(s.ToDevice.Events) != 1 || s.ToDevice.Events[0].Content.Raw["n"] != float64(3) {
		t.Fatalf("alice's other device got %+v", s.ToDevice.Events)
	}
}

// An m.device_list_update from the user's server drops the cached device
// list, so the next query asks again; one from another server does not.
func TestFederationE2EEDeviceListUpdateIn(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startKeysPeer(t, fed, "c.test")
	other := startFakePeer(t, fed, "d.test")
	peer.devices.Store(map[string]any{"CDEV": peerDeviceKeys(t, "@carol:c.test", "CDEV")})
	alice := a.Register("alice")
	query := func() int {
		t.Helper()
		st, body := e2eeRaw(t, a, alice.AccessToken, "POST", "/_matrix/client/v3/keys/query",
			map[string]any{"device_keys": map[string]any{"@carol:c.test": []string{}}})
		if st != 200 {
			t.Fatalf("keys/query: %d %v", st, body)
		}
		var devices map[string]map[string]json.RawMessage
		_ = json.Unmarshal(body["device_keys"], &devices)
		return len(devices["@carol:c.test"])
	}
	if n := query(); n != 1 {
		t.Fatalf("first query: %d devices", n)
	}
	peer.devices.Store(map[string]any{"CDEV": peerDeviceKeys(t, "@carol:c.test", "CDEV"), "CDEV2": peerDeviceKeys(t, "@carol:c.test", "CDEV2")})
	update := map[string]any{"edu_type": "m.device_list_update", "content": map[string]any{
		"user_id": "@carol:c.test", "device_id": "CDEV2", "stream_id": 2, "prev_id": []int{1},
		"keys": peerDeviceKeys(t, "@carol:c.test", "CDEV2")}}
	// From d.test: not carol's server, ignored.
	sendEDUs(t, fed, a, other, "d1", update)
	if n := query(); n != 1 || peer.queries.Load() != 1 {
		t.Fatalf("after a foreign update: %d devices, %d remote queries", n, peer.queries.Load())
	}
	tok := syncOnce(t, alice, "", 0).NextBatch
	sendEDUs(t, fed, a, peer.fakePeer, "c1", update)
	// Alice asked for carol's keys but shares no room with her: her sync
	// does not hear of the change.
	if s := syncOnce(t, alice, tok, 0); slices.Contains(s.DeviceLists.Changed, "@carol:c.test") {
		t.Fatalf("device_lists.changed without a shared room: %v", s.DeviceLists.Changed)
	}
	if n := query(); n != 2 || peer.queries.Load() != 2 {
		t.Fatalf("after the update: %d devices, %d remote queries", n, peer.queries.Load())
	}
	// Cached again.
	if n := query(); n != 2 || peer.queries.Load() != 2 {
		t.Fatalf("third query: %d devices, %d remote queries", n, peer.queries.Load())
	}
	// A signing key update drops it too.
	sendEDUs(t, fed, a, peer.fakePeer, "c2", map[string]any{"edu_type": "m.signing_key_update",
		"content": map[string]any{"user_id": "@carol:c.test"}})
	if query(); peer.queries.Load() != 3 {
		t.Fatalf("after a signing key update: %d remote queries", peer.queries.Load())
	}
}

// loginAgain logs a registered user in on a new device.
func loginAgain(t *testing.T, node *shoaltest.Node, localpart string) *mautrix.Client {
	t.Helper()
	cli := node.Client()
	if _, err := cli.Login(context.Background(), &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:   "password-" + localpart, StoreCredentials: true}); err != nil {
		t.Fatal(err)
	}
	return cli
}

// syncUntilE2EE long-polls cli until cond holds on a response (from tok),
// and returns that response.
func syncUntilE2EE(t *testing.T, cli *mautrix.Client, tok, what string, cond func(*mautrix.RespSync) bool) *mautrix.RespSync {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		s := syncOnce(t, cli, tok, 1000)
		if cond(s) {
			return s
		}
		tok = s.NextBatch
	}
	t.Fatalf("%s never showed in %s's sync", what, cli.UserID)
	return nil
}

// Two servers sharing a room: a new device of bob on b.test shows in
// alice's device_lists.changed on a.test (b.test publishes an
// m.device_list_update, a.test drops its cache and tells alice), the next
// query sees the device, and to-device messages go both ways.
func TestFederationE2EETwoServers(t *testing.T) {
	_, a, b := twoNodes(t)
	ctx := context.Background()
	alice, bob := a.Register("alice"), b.Register("bob")
	uploadE2EE(t, alice)
	uploadE2EE(t, bob)
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoom(ctx, room.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}}); err != nil {
		t.Fatalf("bob joins alice's room: %v", err)
	}
	tok := syncUntilE2EE(t, alice, "", "bob's join", func(s *mautrix.RespSync) bool {
		jm, err := alice.JoinedMembers(ctx, room.RoomID)
		_, ok := jm.Joined[bob.UserID]
		return err == nil && ok
	}).NextBatch
	devicesOf := func(user id.UserID) map[string]json.RawMessage {
		t.Helper()
		st, body := e2eeRaw(t, a, alice.AccessToken, "POST", "/_matrix/client/v3/keys/query",
			map[string]any{"device_keys": map[string]any{string(user): []string{}}})
		if st != 200 {
			t.Fatalf("keys/query: %d %v", st, body)
		}
		var devices map[string]map[string]json.RawMessage
		_ = json.Unmarshal(body["device_keys"], &devices)
		return devices[string(user)]
	}
	if d := devicesOf(bob.UserID); len(d) != 1 || d[string(bob.DeviceID)] == nil {
		t.Fatalf("bob's devices: %v", d)
	}

	// Bob's new device.
	laptop := loginAgain(t, b, "bob")
	uploadE2EE(t, laptop)
	syncUntilE2EE(t, alice, tok, "bob's device list change", func(s *mautrix.RespSync) bool {
		return slices.Contains(s.DeviceLists.Changed, bob.UserID)
	})
	if d := devicesOf(bob.UserID); len(d) != 2 || d[string(laptop.DeviceID)] == nil {
		t.Fatalf("bob's devices after the change: %v", d)
	}
	// Cross-signing keys: an m.signing_key_update.
	tok = syncOnce(t, alice, tok, 0).NextBatch
	xs := crossKeys(t, bob.UserID, newKey(), newKey(), newKey())
	if st, body := e2eeRaw(t, b, bob.AccessToken, "POST", "/_matrix/client/v3/keys/device_signing/upload", xs); st != 200 {
		t.Fatalf("cross-signing upload: %d %v", st, body)
	}
	tok = syncUntilE2EE(t, alice, tok, "bob's cross-signing keys", func(s *mautrix.RespSync) bool {
		return slices.Contains(s.DeviceLists.Changed, bob.UserID)
	}).NextBatch
	st, body := e2eeRaw(t, a, alice.AccessToken, "POST", "/_matrix/client/v3/keys/query",
		map[string]any{"device_keys": map[string]any{string(bob.UserID): []string{}}})
	var masters map[string]json.RawMessage
	_ = json.Unmarshal(body["master_keys"], &masters)
	if st != 200 || canon(t, masters[string(bob.UserID)]) != canon(t, xs["master_key"]) {
		t.Fatalf("bob's master key after the update: %d %s", st, body["master_keys"])
	}

	// To-device a → b, to one device and to all of bob's.
	bobTok := syncOnce(t, bob, "", 0).NextBatch
	laptopTok := syncOnce(t, laptop, "", 0).NextBatch
	send := func(from *mautrix.Client, node *shoaltest.Node, txn string, to id.UserID, dev id.DeviceID, n int) {
		t.Helper()
		body := map[string]any{"messages": map[string]any{string(to): map[string]any{string(dev): map[string]any{"n": n}}}}
		if st, rb := e2eeRaw(t, node, from.AccessToken, "PUT", "/_matrix/client/v3/sendToDevice/m.test/"+txn, body); st != 200 {
			t.Fatalf("sendToDevice: %d %v", st, rb)
		}
	}
	send(alice, a, "t1", bob.UserID, bob.DeviceID, 1)
	send(alice, a, "t2", bob.UserID, "*", 2)
	var got []float64
	syncUntilE2EE(t, bob, bobTok, "alice's to-device messages", func(s *mautrix.RespSync) bool {
		for _, ev := range s.ToDevice.Events {
			if ev.Sender == alice.UserID {
				got = append(got, ev.Content.Raw["n"].(float64))
			}
		}
		return len(got) >= 2
	})
	if len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("bob's phone got %v", got)
	}
	syncUntilE2EE(t, laptop, laptopTok, "alice's message to all devices", func(s *mautrix.RespSync) bool {
		return len(s.ToDevice.Events) == 1 && s.ToDevice.Events[0].Content.Raw["n"] == float64(2)
	})
	// And b → a.
	aliceTok := syncOnce(t, alice, "", 0).NextBatch
	send(bob, b, "t3", alice.UserID, alice.DeviceID, 3)
	aliceTok = syncUntilE2EE(t, alice, aliceTok, "bob's to-device message", func(s *mautrix.RespSync) bool {
		return len(s.ToDevice.Events) == 1 && s.ToDevice.Events[0].Sender == bob.UserID
	}).NextBatch

	// A deleted device: deleted in a.test's answers too.
	if _, err := laptop.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	syncUntilE2EE(t, alice, aliceTok, "bob's logout", func(s *mautrix.RespSync) bool {
		return slices.Contains(s.DeviceLists.Changed, bob.UserID)
	})
	if d := devicesOf(bob.UserID); len(d) != 1 || d[string(bob.DeviceID)] == nil {
		t.Fatalf("bob's devices after the logout: %v", d)
	}
}
