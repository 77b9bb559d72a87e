package gateway_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// A CORS preflight is answered on every client endpoint — with path
// parameters, authenticated or not, known or not — and every answer,
// errors included, carries the CORS headers.
func TestCORSPreflightOnEveryEndpoint(t *testing.T) {
	node := shoaltest.Start(t, shoaltest.WithTLS)
	tr := newTransports(node.TLSRoots())
	defer tr.close()
	paths := []string{
		"/_matrix/client/v3/login",
		"/_matrix/client/v3/sync",
		"/_matrix/client/v3/rooms/!r:test.local/send/m.room.message/txn1",
		"/_matrix/client/v3/rooms/!r:test.local/state/m.room.name/",
		"/_matrix/client/v3/profile/@a:test.local/displayname",
		"/_matrix/client/v3/pushrules/global/content/x",
		"/_matrix/client/v3/no/such/endpoint",
		"/.well-known/matrix/client",
	}
	for _, base := range []struct {
		url string
		rt  http.RoundTripper
	}{{node.BaseURL, http.DefaultTransport}, {"https://" + node.TLSAddrs[0], tr.h2}, {"https://" + node.TLSAddrs[0], tr.h3}} {
		for _, p := range paths {
			req, _ := http.NewRequest(http.MethodOptions, base.url+p, nil)
			req.Header.Set("Origin", "https://app.example")
			req.Header.Set("Access-Control-Request-Method", "PUT")
			req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
			resp, err := base.rt.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			h := resp.Header
			if resp.StatusCode != 200 || h.Get("Access-Control-Allow-Origin") != "*" ||
				h.Get("Access-Control-Allow-Methods") != "GET, HEAD, POST, PUT, DELETE, OPTIONS" ||
				h.Get("Access-Control-Allow-Headers") != "X-Requested-With, Content-Type, Authorization" {
				t.Fatalf("preflight %s%s: %d %v", base.url, p, resp.StatusCode, h)
			}
		}
	}
	// The actual request, an error among them, carries them too.
	status, _, h := jsonCall(t, http.DefaultTransport, "GET", node.BaseURL+"/_matrix/client/v3/sync", "", nil)
	if status != 401 || h.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("error response without CORS: %d %v", status, h)
	}
}

// expectLimited makes a request that must be refused by a limit.
func expectLimited(t *testing.T, rt http.RoundTripper, method, url, token string, reqBody any) {
	t.Helper()
	status, body, h := jsonCall(t, rt, method, url, token, reqBody)
	if status != http.StatusTooManyRequests || body["errcode"] != "M_LIMIT_EXCEEDED" {
		t.Fatalf("want 429 M_LIMIT_EXCEEDED, got %d %v", status, body)
	}
	ms, ok := body["retry_after_ms"].(float64)
	secs, err := strconv.Atoi(h.Get("Retry-After"))
	if !ok || ms <= 0 || err != nil || secs < 1 || float64(secs)*1000 < ms {
		t.Fatalf("429 without a consistent Retry-After (%q) and retry_after_ms (%v)", h.Get("Retry-After"), body["retry_after_ms"])
	}
}

// Under a burst, the routes the spec rate-limits answer 429 with
// Retry-After in seconds and retry_after_ms (MSC4041): per IP before
// authentication, per user after. Routes the spec does not limit are not.
func TestRateLimitBurst(t *testing.T) {
	node := shoaltest.Start(t, func(cfg *gateway.NodeConfig) {
		cfg.Gateway.RateLimit = true
		cfg.Gateway.RateLimitPerSecond = 0.5
		cfg.Gateway.RateLimitBurst = 4
	})
	rt := http.DefaultTransport
	base := node.BaseURL
	// Registration is per IP: four go through, the fifth is limited.
	var tokens []string
	for i := range 4 {
		tokens = append(tokens, register(t, rt, base, "user"+strconv.Itoa(i)))
	}
	expectLimited(t, rt, "POST", base+"/_matrix/client/v3/register", "", map[string]any{
		"username": "late", "password": "pw", "auth": map[string]string{"type": "m.login.dummy"}})
	// So is GET /login, from the same address.
	expectLimited(t, rt, "GET", base+"/_matrix/client/v3/login", "", nil)

	// whoami is limited per user: user0 exhausts its own bucket only.
	for range 4 {
		if status, body, _ := jsonCall(t, rt, "GET", base+"/_matrix/client/v3/account/whoami", tokens[0], nil); status != 200 {
			t.Fatalf("whoami: %d %v", status, body)
		}
	}
	expectLimited(t, rt, "GET", base+"/_matrix/client/v3/account/whoami", tokens[0], nil)
	if status, _, _ := jsonCall(t, rt, "GET", base+"/_matrix/client/v3/account/whoami", tokens[1], nil); status != 200 {
		t.Fatalf("user1 limited by user0's burst: %d", status)
	}
	// joined_rooms is not rate-limited by the spec.
	for range 10 {
		if status, _, _ := jsonCall(t, rt, "GET", base+"/_matrix/client/v3/joined_rooms", tokens[0], nil); status != 200 {
			t.Fatalf("joined_rooms limited: %d", status)
		}
	}
}

// Every rate-limited route keyed by user authenticates: limiting before
// the token is checked would let anyone drain another user's bucket.
func TestRateLimitedUserRoutesAreAuthenticated(t *testing.T) {
	node := shoaltest.Start(t)
	for _, p := range []string{"GET /_matrix/client/v3/account/whoami", "GET /_matrix/client/v3/capabilities",
		"POST /_matrix/client/v3/join/!r:test.local", "PUT /_matrix/client/v3/presence/@a:test.local/status",
		"PUT /_matrix/client/v3/rooms/!r:test.local/typing/@a:test.local", "PUT /_matrix/client/v3/pushrules/global/content/x"} {
		method, path, _ := strings.Cut(p, " ")
		status, body, _ := jsonCall(t, http.DefaultTransport, method, node.BaseURL+path, "", map[string]any{})
		if status != 401 || body["errcode"] != "M_MISSING_TOKEN" {
			t.Errorf("%s without a token: %d %v", p, status, body)
		}
	}
}

// A client may have at most MaxConcurrent requests in flight: a third
// long-poll of one user is refused with 429 and Retry-After, another user
// is not affected, and the slots come back when the polls end.
func TestConcurrentRequestLimit(t *testing.T) {
	node := shoaltest.Start(t, func(cfg *gateway.NodeConfig) { cfg.Gateway.MaxConcurrent = 2 })
	rt := http.DefaultTransport
	base := node.BaseURL
	alice, bob := register(t, rt, base, "alice"), register(t, rt, base, "bob")
	_, first, _ := jsonCall(t, rt, "GET", base+"/_matrix/client/v3/sync", alice, nil)
	poll := base + "/_matrix/client/v3/sync?timeout=3000&since=" + first["next_batch"].(string)
	done := make(chan int, 2)
	for range 2 {
		go func() {
			status, _, _ := jsonCall(t, rt, "GET", poll, alice, nil)
			done <- status
		}()
	}
	time.Sleep(500 * time.Millisecond)
	expectLimited(t, rt, "GET", base+"/_matrix/client/v3/joined_rooms", alice, nil)
	if status, _, _ := jsonCall(t, rt, "GET", base+"/_matrix/client/v3/joined_rooms", bob, nil); status != 200 {
		t.Fatalf("bob refused while alice polls: %d", status)
	}
	for range 2 {
		if status := <-done; status != 200 {
			t.Fatalf("long-poll: %d", status)
		}
	}
	if status, _, _ := jsonCall(t, rt, "GET", base+"/_matrix/client/v3/joined_rooms", alice, nil); status != 200 {
		t.Fatalf("slots not given back: %d", status)
	}
}

// Before authentication the limit is per address (with rate limits on):
// two logins whose bodies trickle in hold both slots of 127.0.0.1.
func TestConcurrentRequestLimitPerAddress(t *testing.T) {
	node := shoaltest.Start(t, func(cfg *gateway.NodeConfig) {
		cfg.Gateway.MaxConcurrent = 2
		cfg.Gateway.RateLimit = true
	})
	var writers []*io.PipeWriter
	done := make(chan int, 2)
	for range 2 {
		pr, pw := io.Pipe()
		writers = append(writers, pw)
		go func() {
			req, _ := http.NewRequest("POST", node.BaseURL+"/_matrix/client/v3/login", pr)
			resp, err := http.DefaultTransport.RoundTrip(req)
			if err != nil {
				done <- 0
				return
			}
			resp.Body.Close()
			done <- resp.StatusCode
		}()
		_, _ = pw.Write([]byte(`{"type":`))
	}
	time.Sleep(500 * time.Millisecond)
	expectLimited(t, http.DefaultTransport, "GET", node.BaseURL+"/_matrix/client/v3/login", "", nil)
	for _, pw := range writers {
		_, _ = pw.Write([]byte(`"m.login.bogus"}`))
		pw.Close()
	}
	for range 2 {
		if status := <-done; status != http.StatusBadRequest {
			t.Fatalf("trickled login: %d", status)
		}
	}
	if status, _, _ := jsonCall(t, http.DefaultTransport, "GET", node.BaseURL+"/_matrix/client/v3/login", "", nil); status != 200 {
		t.Fatalf("address slots not given back: %d", status)
	}
}

// Oversized headers get 431 and oversized bodies 413 M_TOO_LARGE, whether
// the body announces its length or streams past the limit.
func TestOversizedHeadersAndBodies(t *testing.T) {
	node := shoaltest.Start(t, shoaltest.WithTLS, func(cfg *gateway.NodeConfig) {
		cfg.Gateway.MaxHeaderBytes = 4 << 10
		cfg.Gateway.MaxBodyBytes = 2 << 10
	})
	tr := newTransports(node.TLSRoots())
	defer tr.close()
	tok := register(t, http.DefaultTransport, node.BaseURL, "alice")

	req, _ := http.NewRequest("GET", node.BaseURL+"/_matrix/client/versions", nil)
	req.Header.Set("X-Padding", strings.Repeat("a", 16<<10))
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("16 KiB of headers: %d", resp.StatusCode)
	}

	big := map[string]any{"msgtype": "m.text", "body": strings.Repeat("x", 4<<10)}
	for _, b := range []struct {
		name string
		url  string
		rt   http.RoundTripper
	}{{"plain", node.BaseURL, http.DefaultTransport}, {"h2", "https://" + node.TLSAddrs[0], tr.h2}, {"h3", "https://" + node.TLSAddrs[0], tr.h3}} {
		status, body, _ := jsonCall(t, b.rt, "PUT", b.url+"/_matrix/client/v3/user/@alice:test.local/account_data/big", tok, big)
		if status != http.StatusRequestEntityTooLarge || body["errcode"] != "M_TOO_LARGE" {
			t.Fatalf("%s: 4 KiB body: %d %v", b.name, status, body)
		}
	}
	// Chunked, no Content-Length: cut off while reading.
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write([]byte(`{"body":"` + strings.Repeat("y", 8<<10) + `"}`))
		pw.Close()
	}()
	req, _ = http.NewRequest("PUT", node.BaseURL+"/_matrix/client/v3/user/@alice:test.local/account_data/big", pr)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err = http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !bytes.Contains(raw, []byte("M_TOO_LARGE")) {
		t.Fatalf("chunked 8 KiB body: %d %s", resp.StatusCode, raw)
	}
}

// A client that trickles its request headers (slowloris) is disconnected
// once ReadHeaderTimeout passes, on the plain and the TLS listener alike
// (where the timeout bounds the handshake too).
func TestSlowHeadersCutOff(t *testing.T) {
	node := shoaltest.Start(t, shoaltest.WithTLS, func(cfg *gateway.NodeConfig) {
		cfg.Gateway.ReadHeaderTimeout = time.Second
	})
	trickle := func(t *testing.T, conn net.Conn) time.Duration {
		t.Helper()
		start := time.Now()
		closed := make(chan struct{})
		go func() {
			_, _ = io.Copy(io.Discard, conn) // returns when the server hangs up
			close(closed)
		}()
		msg := "GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 30)
		for i := 0; i < len(msg); i++ {
			select {
			case <-closed:
				return time.Since(start)
			case <-time.After(time.Second):
			}
			if _, err := conn.Write([]byte{msg[i]}); err != nil {
				return time.Since(start)
			}
		}
		t.Fatal("a trickling client was never cut off")
		return 0
	}
	t.Run("plain", func(t *testing.T) {
		conn, err := net.Dial("tcp", node.ClientAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if took := trickle(t, conn); took > 4*time.Second {
			t.Fatalf("cut off after %v", took)
		}
	})
	t.Run("tls", func(t *testing.T) {
		raw, err := net.Dial("tcp", node.TLSAddrs[0])
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		conn := tls.Client(raw, &tls.Config{RootCAs: node.TLSRoots(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
		if err := conn.Handshake(); err != nil {
			t.Fatal(err)
		}
		if took := trickle(t, conn); took > 4*time.Second {
			t.Fatalf("cut off after %v", took)
		}
	})
	t.Run("handshake", func(t *testing.T) {
		// Connect and say nothing: no TLS ClientHello ever comes.
		conn, err := net.Dial("tcp", node.TLSAddrs[0])
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = bufio.NewReader(conn).ReadByte()
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("a silent connection was never cut off")
		}
		if took := time.Since(start); took > 4*time.Second {
			t.Fatalf("cut off after %v", took)
		}
	})
}
