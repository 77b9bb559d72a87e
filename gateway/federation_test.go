package gateway_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/fedclient"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// fakePeer is a Matrix server reduced to its key endpoint, on real TLS with
// a certificate of the federation's CA: it signs requests like a peer would
// and counts how often its keys are fetched.
type fakePeer struct {
	id      *actors.ServerIdentity
	fetches atomic.Int32
	down    atomic.Bool
}

func startFakePeer(t testing.TB, fed *shoaltest.Federation, name string) *fakePeer {
	return startFakePeerWith(t, fed, name, nil)
}

// startFakePeerWith is startFakePeer with more endpoints: extra, when set,
// answers every request other than the key endpoint's.
func startFakePeerWith(t testing.TB, fed *shoaltest.Federation, name string, extra func(p *fakePeer, w http.ResponseWriter, r *http.Request)) *fakePeer {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	p := &fakePeer{id: &actors.ServerIdentity{ServerName: name, KeyID: "ed25519:fake1", PrivateKey: priv}}
	startTLSPeer(t, fed, name, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_matrix/key/v2/server" {
			if extra != nil {
				extra(p, w, r)
				return
			}
			http.Error(w, `{"errcode":"M_UNRECOGNIZED","error":"no"}`, http.StatusNotFound)
			return
		}
		if p.down.Load() {
			http.Error(w, `{"errcode":"M_UNRECOGNIZED","error":"no"}`, http.StatusNotFound)
			return
		}
		p.fetches.Add(1)
		writeServerKeys(t, w, p.id)
	}))
	return p
}

// startTLSPeer serves handler on loopback over TLS with a certificate of
// fed's CA for name, and puts it in fed's name table.
func startTLSPeer(t testing.TB, fed *shoaltest.Federation, name string, handler http.Handler) {
	t.Helper()
	srv := httptest.NewUnstartedServer(handler)
	certFile, keyFile := fed.CA.Issue(t, t.TempDir(), name)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	n, _ := strconv.Atoi(port)
	fed.Add(name, n)
}

// writeServerKeys answers /_matrix/key/v2/server for id: its key, valid
// for a day, self-signed.
func writeServerKeys(t testing.TB, w http.ResponseWriter, id *actors.ServerIdentity) {
	body, _ := json.Marshal(map[string]any{
		"server_name":     id.ServerName,
		"valid_until_ts":  time.Now().Add(24 * time.Hour).UnixMilli(),
		"verify_keys":     map[string]any{id.KeyID: map[string]string{"key": base64.RawStdEncoding.EncodeToString(id.PrivateKey.Public().(ed25519.PublicKey))}},
		"old_verify_keys": map[string]any{},
	})
	signed, err := eventgraph.SignJSON(body, id.ServerName, id.KeyID, id.PrivateKey)
	if err != nil {
		t.Error(err)
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(signed)
}

// signedGet sends a GET signed by id (as destination dest) straight to a
// node's TLS listener and returns status and body.
func signedGet(t *testing.T, fed *shoaltest.Federation, node *shoaltest.Node, id *actors.ServerIdentity, dest, uri string) (int, map[string]any) {
	t.Helper()
	auth, err := fedclient.SignRequest(id, http.MethodGet, uri, dest, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fedGet(t, fed, node, uri, auth)
}

func fedGet(t *testing.T, fed *shoaltest.Federation, node *shoaltest.Node, uri, auth string) (int, map[string]any) {
	t.Helper()
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fed.CA.Pool(), ServerName: node.ServerName()}}, Timeout: 30 * time.Second}
	defer cli.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, "https://"+node.TLSAddrs[0]+uri, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := cli.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func twoNodes(t *testing.T) (*shoaltest.Federation, *shoaltest.Node, *shoaltest.Node) {
	fed := shoaltest.NewFederation(t)
	return fed, fed.Start(t, "a.test"), fed.Start(t, "b.test")
}

// A user on a.test reads the profile of a user on b.test through a.test's
// client API: a.test discovers b.test (SRV), checks its certificate against
// the test CA, signs the request; b.test fetches a.test's key, checks the
// signature and answers from its user actor.
func TestFederationRemoteProfile(t *testing.T) {
	fed, a, b := twoNodes(t)
	ctx := context.Background()
	bob := b.Register("bob")
	if err := bob.SetDisplayName(ctx, "Bob of B"); err != nil {
		t.Fatal(err)
	}
	alice := a.Register("alice")
	p, err := alice.GetProfile(ctx, bob.UserID)
	if err != nil {
		t.Fatalf("remote profile: %v", err)
	}
	if p.DisplayName != "Bob of B" {
		t.Fatalf("display name %q", p.DisplayName)
	}
	dn, err := alice.GetDisplayName(ctx, bob.UserID)
	if err != nil || dn.DisplayName != "Bob of B" {
		t.Fatalf("remote display name: %v %v", dn, err)
	}
	_, err = alice.GetProfile(ctx, b.UserID("nobody"))
	if !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("unknown remote user: %v", err)
	}
	// A server that does not exist: the client gets an error, not a hang.
	_, err = alice.GetProfile(ctx, "@x:nowhere.test")
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusBadGateway {
		t.Fatalf("unreachable server: %v", err)
	}
	// A node without AllowPrivate refuses to connect to b.test, which
	// resolves to loopback.
	strict := fed.Start(t, "strict.test", func(cfg *gateway.NodeConfig) { cfg.Gateway.Federation.AllowPrivate = false })
	_, err = strict.Register("erin").GetProfile(ctx, bob.UserID)
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusBadGateway {
		t.Fatalf("private address: %v", err)
	}
}

// A peer's key is fetched once and then served from its server actor's
// cache, across a restart too; forged signatures, wrong destinations and
// malformed headers are refused with 401 M_UNAUTHORIZED.
func TestFederationRequestAuth(t *testing.T) {
	fed, a, b := twoNodes(t)
	_ = b
	a.Register("alice")
	peer := startFakePeer(t, fed, "c.test")
	uri := "/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape(string(a.UserID("alice")))

	for i := range 3 {
		status, body := signedGet(t, fed, a, peer.id, "a.test", uri)
		if status != http.StatusOK {
			t.Fatalf("request %d: %d %v", i, status, body)
		}
	}
	if n := peer.fetches.Load(); n != 1 {
		t.Fatalf("key fetched %d times, want 1", n)
	}
	// Concurrent first requests of another peer share one fetch.
	peer2 := startFakePeer(t, fed, "d.test")
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if status, body := signedGet(t, fed, a, peer2.id, "a.test", uri); status != http.StatusOK {
				t.Errorf("concurrent: %d %v", status, body)
			}
		})
	}
	wg.Wait()
	if n := peer2.fetches.Load(); n != 1 {
		t.Fatalf("concurrent requests fetched the key %d times, want 1", n)
	}

	unauthorized := func(what string, status int, body map[string]any) {
		t.Helper()
		if status != http.StatusUnauthorized || body["errcode"] != "M_UNAUTHORIZED" {
			t.Fatalf("%s: %d %v", what, status, body)
		}
	}
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	forger := &actors.ServerIdentity{ServerName: "c.test", KeyID: peer.id.KeyID, PrivateKey: other}
	status, body := signedGet(t, fed, a, forger, "a.test", uri)
	unauthorized("forged signature", status, body)
	status, body = signedGet(t, fed, a, peer.id, "b.test", uri)
	unauthorized("wrong destination", status, body)
	// Signed for another URI.
	auth, _ := fedclient.SignRequest(peer.id, http.MethodGet, uri+"x", "a.test", nil)
	status, body = fedGet(t, fed, a, uri, auth)
	unauthorized("other URI", status, body)
	status, body = fedGet(t, fed, a, uri, "")
	unauthorized("no header", status, body)
	status, body = fedGet(t, fed, a, uri, `X-Matrix origin=c.test,key="ed25519:fake1"`)
	unauthorized("no sig", status, body)
	// Unquoted values, colons included, are accepted (older senders).
	auth, _ = fedclient.SignRequest(peer.id, http.MethodGet, uri, "a.test", nil)
	x, err := fedclient.ParseXMatrix(auth)
	if err != nil {
		t.Fatal(err)
	}
	status, body = fedGet(t, fed, a, uri, "X-Matrix origin=c.test,destination=a.test,key=ed25519:fake1,sig=\""+x.Sig+"\"")
	if status != http.StatusOK {
		t.Fatalf("unquoted params: %d %v", status, body)
	}

	// The key was kept in the partition: after a restart, with the peer's
	// key endpoint down, requests still verify without a fetch.
	peer.down.Store(true)
	a.Restart()
	status, body = signedGet(t, fed, a, peer.id, "a.test", uri)
	if status != http.StatusOK {
		t.Fatalf("after restart: %d %v", status, body)
	}
	if n := peer.fetches.Load(); n != 1 {
		t.Fatalf("key fetched %d times after restart, want 1", n)
	}
	// An origin whose keys cannot be had at all.
	_, lost, _ := ed25519.GenerateKey(rand.Reader)
	status, body = signedGet(t, fed, a, &actors.ServerIdentity{ServerName: "gone.test", KeyID: "ed25519:x", PrivateKey: lost}, "a.test", uri)
	unauthorized("unknown origin", status, body)
}

// GET /_matrix/federation/v1/version needs no signature; the directory
// query answers for local aliases.
func TestFederationVersionAndDirectory(t *testing.T) {
	fed, a, b := twoNodes(t)
	status, body := fedGet(t, fed, a, "/_matrix/federation/v1/version", "")
	if status != http.StatusOK || body["server"].(map[string]any)["name"] != "shoal" {
		t.Fatalf("version: %d %v", status, body)
	}
	ctx := context.Background()
	carol := b.Register("carol")
	room, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{RoomAliasName: "lobby"})
	if err != nil {
		t.Fatal(err)
	}
	// a.test asks b.test, signing with its own key, through its client.
	ident, err := gateway.LoadOrCreateSigningKey(a.DataDir(), "a.test")
	if err != nil {
		t.Fatal(err)
	}
	status, body = signedGet(t, fed, b, ident, "b.test", "/_matrix/federation/v1/query/directory?room_alias="+url.QueryEscape("#lobby:b.test"))
	if status != http.StatusOK || body["room_id"] != string(room.RoomID) {
		t.Fatalf("directory: %d %v", status, body)
	}
	if s, _ := body["servers"].([]any); len(s) != 1 || s[0] != "b.test" {
		t.Fatalf("servers: %v", body["servers"])
	}
	status, body = signedGet(t, fed, b, ident, "b.test", "/_matrix/federation/v1/query/directory?room_alias="+url.QueryEscape("#none:b.test"))
	if status != http.StatusNotFound || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("unknown alias: %d %v", status, body)
	}
	// A profile field the user has not set is not found.
	b.Register("dave")
	status, body = signedGet(t, fed, b, ident, "b.test", "/_matrix/federation/v1/query/profile?field=m.tz&user_id="+url.QueryEscape("@dave:b.test"))
	if status != http.StatusNotFound || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("missing field: %d %v", status, body)
	}
}

// keyOf reads a node's own key from /_matrix/key/v2/server.
func keyOf(t *testing.T, fed *shoaltest.Federation, n *shoaltest.Node) (string, ed25519.PublicKey) {
	t.Helper()
	status, body := fedGet(t, fed, n, "/_matrix/key/v2/server", "")
	if status != http.StatusOK {
		t.Fatalf("keys of %s: %d", n.ServerName(), status)
	}
	for id, k := range body["verify_keys"].(map[string]any) {
		pub, err := eventgraph.DecodeBase64(k.(map[string]any)["key"].(string))
		if err != nil {
			t.Fatal(err)
		}
		return id, pub
	}
	t.Fatal("no verify key")
	return "", nil
}

// The notary API returns b.test's own key response, signed by b.test and
// by a.test, for GET and POST; a.test's own key comes signed too.
func TestNotaryQuery(t *testing.T) {
	fed, a, b := twoNodes(t)
	aID, aKey := keyOf(t, fed, a)
	bID, bKey := keyOf(t, fed, b)
	check := func(what string, resp map[string]any, want string) {
		t.Helper()
		list, _ := resp["server_keys"].([]any)
		if len(list) == 0 {
			t.Fatalf("%s: no server_keys: %v", what, resp)
		}
		for _, e := range list {
			raw, _ := json.Marshal(e)
			if e.(map[string]any)["server_name"] != want {
				t.Fatalf("%s: response for %v", what, e.(map[string]any)["server_name"])
			}
			if err := eventgraph.VerifyJSON(raw, "a.test", aID, aKey); err != nil {
				t.Fatalf("%s: notary signature: %v", what, err)
			}
			if want == "b.test" {
				if err := eventgraph.VerifyJSON(raw, "b.test", bID, bKey); err != nil {
					t.Fatalf("%s: self-signature: %v", what, err)
				}
			}
		}
	}
	status, body := fedGet(t, fed, a, "/_matrix/key/v2/query/b.test", "")
	if status != http.StatusOK {
		t.Fatalf("GET: %d %v", status, body)
	}
	check("GET", body, "b.test")
	status, body = fedGet(t, fed, a, "/_matrix/key/v2/query/a.test", "")
	if status != http.StatusOK {
		t.Fatalf("GET own: %d %v", status, body)
	}
	check("GET own", body, "a.test")

	q, _ := json.Marshal(map[string]any{"server_keys": map[string]any{"b.test": map[string]any{bID: map[string]any{"minimum_valid_until_ts": time.Now().UnixMilli()}}}})
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fed.CA.Pool(), ServerName: "a.test"}}}
	defer cli.CloseIdleConnections()
	resp, err := cli.Post("https://"+a.TLSAddrs[0]+"/_matrix/key/v2/query", "application/json", bytes.NewReader(q))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST: %d %v", resp.StatusCode, err)
	}
	check("POST", out, "b.test")

	// A server nobody can reach: an empty list, not an error.
	status, body = fedGet(t, fed, a, "/_matrix/key/v2/query/gone.test", "")
	if list, _ := body["server_keys"].([]any); status != http.StatusOK || len(list) != 0 {
		t.Fatalf("unreachable: %d %v", status, body)
	}
}

// When a server cannot be reached for its keys, a configured notary's
// answer (signed by the key configured for it) is used.
func TestFederationNotaryFallback(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	n := fed.Start(t, "notary.test")
	nID, nKey := keyOf(t, fed, n)
	peer := startFakePeer(t, fed, "c.test")
	// The notary learns c.test's key while c.test is up.
	if status, body := fedGet(t, fed, n, "/_matrix/key/v2/query/c.test", ""); status != http.StatusOK || len(body["server_keys"].([]any)) != 1 {
		t.Fatalf("notary query: %d %v", status, body)
	}
	peer.down.Store(true)
	a := fed.Start(t, "a.test", func(cfg *gateway.NodeConfig) {
		cfg.Gateway.Federation.TrustedKeyServers = []gateway.TrustedKeyServer{{
			ServerName: "notary.test",
			VerifyKeys: map[string]string{nID: base64.RawStdEncoding.EncodeToString(nKey)},
		}}
	})
	a.Register("alice")
	uri := "/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape("@alice:a.test")
	if status, body := signedGet(t, fed, a, peer.id, "a.test", uri); status != http.StatusOK {
		t.Fatalf("via notary: %d %v", status, body)
	}
}
