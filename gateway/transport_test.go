package gateway_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// A client on HTTP/3 alone — quic-go's client, trusting the node's
// self-signed certificate — registers, creates a room, sends and syncs,
// and a long-poll over HTTP/3 wakes up on a send.
func TestHTTP3RegisterSendSync(t *testing.T) {
	node := shoaltest.Start(t, shoaltest.WithTLS)
	tr := newTransports(node.TLSRoots())
	defer tr.close()
	base := "https://" + node.TLSAddrs[0]

	req, _ := http.NewRequest("GET", base+"/_matrix/client/versions", nil)
	resp, err := tr.h3.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 3 || resp.StatusCode != 200 {
		t.Fatalf("over HTTP/3: %s %d", resp.Proto, resp.StatusCode)
	}

	alice := mautrixOver(t, tr.h3, base)
	reg, err := alice.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: "alice", Password: "pw-alice"})
	if err != nil {
		t.Fatal(err)
	}
	alice.UserID, alice.AccessToken, alice.DeviceID = reg.UserID, reg.AccessToken, reg.DeviceID
	room, err := alice.CreateRoom(context.Background(), &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendText(context.Background(), room.RoomID, "over quic"); err != nil {
		t.Fatal(err)
	}
	first, err := alice.SyncRequest(context.Background(), 0, "", "", false, event.PresenceOnline)
	if err != nil {
		t.Fatal(err)
	}
	if !timelineHas(first, room.RoomID.String(), "over quic") {
		t.Fatal("initial sync over HTTP/3 lacks the message")
	}

	woke := make(chan *mautrix.RespSync, 1)
	go func() {
		res, err := alice.SyncRequest(context.Background(), 30_000, first.NextBatch, "", false, event.PresenceOnline)
		if err != nil {
			t.Error(err)
		}
		woke <- res
	}()
	time.Sleep(200 * time.Millisecond) // let the long-poll park
	start := time.Now()
	if _, err := alice.SendText(context.Background(), room.RoomID, "wake up"); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-woke:
		if res == nil || !timelineHas(res, room.RoomID.String(), "wake up") {
			t.Fatal("long-poll over HTTP/3 woke without the message")
		}
		t.Logf("HTTP/3 long-poll woke %v after the send began", time.Since(start))
	case <-time.After(20 * time.Second):
		t.Fatal("long-poll over HTTP/3 did not wake")
	}
}

func timelineHas(res *mautrix.RespSync, roomID, body string) bool {
	for id, r := range res.Rooms.Join {
		if id.String() != roomID {
			continue
		}
		for _, ev := range r.Timeline.Events {
			if b, _ := ev.Content.Raw["body"].(string); b == body {
				return true
			}
		}
	}
	return false
}

// Every TCP response of a TLS listener advertises HTTP/3 on its port; ALPN
// picks HTTP/2 when offered and HTTP/1.1 otherwise; TLS 1.2 and 1.3 both
// work. The plain listener advertises nothing.
func TestTLSListenerVersionsAndAltSvc(t *testing.T) {
	node := shoaltest.Start(t, shoaltest.WithTLS)
	_, port, _ := net.SplitHostPort(node.TLSAddrs[0])
	p, _ := strconv.Atoi(port)
	wantAltSvc := gateway.AltSvcFor(p)
	if wantAltSvc != `h3=":`+port+`"; ma=86400` {
		t.Fatalf("Alt-Svc value %q", wantAltSvc)
	}
	for _, tc := range []struct {
		alpn    string
		version uint16
	}{{"h1", tls.VersionTLS12}, {"h1", tls.VersionTLS13}, {"h2", tls.VersionTLS12}, {"h2", tls.VersionTLS13}} {
		t.Run(fmt.Sprintf("%s-%x", tc.alpn, tc.version), func(t *testing.T) {
			tr := newTransports(node.TLSRoots())
			defer tr.close()
			ht := tr.h1
			if tc.alpn == "h2" {
				ht = tr.h2
			}
			ht.TLSClientConfig.MinVersion, ht.TLSClientConfig.MaxVersion = tc.version, tc.version
			for _, path := range []string{"/_matrix/client/versions", "/_matrix/client/v3/nothing-here"} {
				req, _ := http.NewRequest("GET", "https://"+node.TLSAddrs[0]+path, nil)
				resp, err := ht.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				wantProto, wantALPN := 1, "http/1.1"
				if tc.alpn == "h2" {
					wantProto, wantALPN = 2, "h2"
				}
				if resp.ProtoMajor != wantProto || resp.TLS.Version != tc.version || resp.TLS.NegotiatedProtocol != wantALPN {
					t.Fatalf("%s: %s, TLS %x, ALPN %q", path, resp.Proto, resp.TLS.Version, resp.TLS.NegotiatedProtocol)
				}
				if got := resp.Header.Get("Alt-Svc"); got != wantAltSvc {
					t.Fatalf("%s: Alt-Svc %q, want %q", path, got, wantAltSvc)
				}
			}
		})
	}
	resp, err := http.Get(node.BaseURL + "/_matrix/client/versions")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Alt-Svc") != "" {
		t.Fatal("plain HTTP advertises HTTP/3")
	}
}

// Shutdown answers a long-poll held over HTTP/3 at once and closes the
// QUIC listener.
func TestHTTP3ShutdownDrainsLongPoll(t *testing.T) {
	node := shoaltest.Start(t, shoaltest.WithTLS)
	tr := newTransports(node.TLSRoots())
	defer tr.close()
	base := "https://" + node.TLSAddrs[0]
	tok := register(t, tr.h3, base, "alice")
	status, first, _ := jsonCall(t, tr.h3, "GET", base+"/_matrix/client/v3/sync", tok, nil)
	if status != 200 {
		t.Fatalf("initial sync: %d", status)
	}
	type result struct {
		status int
		took   time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		status, _, _ := jsonCall(t, tr.h3, "GET", base+"/_matrix/client/v3/sync?timeout=60000&since="+first["next_batch"].(string), tok, nil)
		done <- result{status, time.Since(start)}
	}()
	time.Sleep(300 * time.Millisecond)
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- node.Node.Stop(ctx)
	}()
	select {
	case r := <-done:
		if r.status != 200 || r.took > 10*time.Second {
			t.Fatalf("long-poll answered %d after %v", r.status, r.took)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("long-poll over HTTP/3 not answered at shutdown")
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop: %v", err)
	}
	node.Node = nil // stopped already
	req, _ := http.NewRequest("GET", base+"/_matrix/client/versions", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	fresh := newTransports(node.TLSRoots())
	defer fresh.close()
	if resp, err := fresh.h3.RoundTrip(req.WithContext(ctx)); err == nil {
		resp.Body.Close()
		t.Fatal("HTTP/3 still answers after shutdown")
	}
}

// A federation listener serves the federation and key APIs, over HTTPS and
// HTTP/3, and refuses the client API.
func TestFederationListener(t *testing.T) {
	node := shoaltest.Start(t, func(cfg *gateway.NodeConfig) { cfg.FederationListen = []string{"127.0.0.1:0"} })
	if len(node.FederationAddrs) != 1 || len(node.TLSAddrs) != 0 {
		t.Fatalf("addresses: tls %v federation %v", node.TLSAddrs, node.FederationAddrs)
	}
	tr := newTransports(node.TLSRoots())
	defer tr.close()
	base := "https://" + node.FederationAddrs[0]
	for _, rt := range []http.RoundTripper{tr.h2, tr.h3} {
		if status, body, _ := jsonCall(t, rt, "GET", base+"/_matrix/key/v2/server", "", nil); status != 200 || body["server_name"] != node.ServerName() {
			t.Fatalf("key API: %d %v", status, body)
		}
		if status, body, _ := jsonCall(t, rt, "GET", base+"/_matrix/client/versions", "", nil); status != 404 || body["errcode"] != "M_UNRECOGNIZED" {
			t.Fatalf("client API on the federation listener: %d %v", status, body)
		}
	}
}

// /.well-known/matrix/client and /server come from the configuration, with
// CORS (browsers fetch the client one), and are 404 when not configured.
func TestWellKnown(t *testing.T) {
	node := shoaltest.Start(t, func(cfg *gateway.NodeConfig) {
		cfg.Gateway.PublicBaseURL = "https://matrix.example.org"
		cfg.Gateway.WellKnownServer = "matrix.example.org:443"
	})
	rt := http.DefaultTransport
	status, body, h := jsonCall(t, rt, "GET", node.BaseURL+"/.well-known/matrix/client", "", nil)
	hs, _ := body["m.homeserver"].(map[string]any)
	if status != 200 || hs["base_url"] != "https://matrix.example.org" || h.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("client well-known: %d %v %v", status, body, h)
	}
	if status, body, _ := jsonCall(t, rt, "GET", node.BaseURL+"/.well-known/matrix/server", "", nil); status != 200 || body["m.server"] != "matrix.example.org:443" {
		t.Fatalf("server well-known: %d %v", status, body)
	}
	bare := shoaltest.Start(t)
	for _, p := range []string{"/.well-known/matrix/client", "/.well-known/matrix/server"} {
		if status, body, _ := jsonCall(t, rt, "GET", bare.BaseURL+p, "", nil); status != 404 || body["errcode"] != "M_NOT_FOUND" {
			t.Fatalf("%s unconfigured: %d %v", p, status, body)
		}
	}
}
