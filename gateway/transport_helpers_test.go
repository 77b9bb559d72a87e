package gateway_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"maunium.net/go/mautrix"
)

// transports are the three ways a client reaches a TLS listener.
type transports struct {
	h1, h2 *http.Transport
	h3     *http3.Transport
}

func newTransports(roots *x509.CertPool) *transports {
	tc := func() *tls.Config { return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12} }
	h1 := tc()
	h1.NextProtos = []string{"http/1.1"}
	return &transports{
		// An empty TLSNextProto map keeps net/http from offering h2.
		h1: &http.Transport{TLSClientConfig: h1, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}},
		h2: &http.Transport{TLSClientConfig: tc(), ForceAttemptHTTP2: true},
		h3: &http3.Transport{TLSClientConfig: tc()},
	}
}

func (tr *transports) close() {
	tr.h1.CloseIdleConnections()
	tr.h2.CloseIdleConnections()
	_ = tr.h3.Close()
}

func (tr *transports) byName(name string) http.RoundTripper {
	switch name {
	case "h1":
		return tr.h1
	case "h2":
		return tr.h2
	}
	return tr.h3
}

// jsonCall does one request and decodes a JSON object answer.
func jsonCall(t testing.TB, rt http.RoundTripper, method, url, token string, body any) (int, map[string]any, http.Header) {
	t.Helper()
	status, raw, h := rawDo(t, rt, method, url, token, body)
	var out map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, url, status, raw, err)
		}
	}
	return status, out, h
}

func rawDo(t testing.TB, rt http.RoundTripper, method, url, token string, body any) (int, []byte, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, url, err)
	}
	return resp.StatusCode, raw, resp.Header
}

// register makes a user over rt and returns its access token.
func register(t testing.TB, rt http.RoundTripper, base, localpart string) string {
	t.Helper()
	status, body, _ := jsonCall(t, rt, "POST", base+"/_matrix/client/v3/register", "", map[string]any{
		"username": localpart, "password": "pw-" + localpart, "auth": map[string]string{"type": "m.login.dummy"},
	})
	if status != 200 {
		t.Fatalf("register %s: %d %v", localpart, status, body)
	}
	tok, _ := body["access_token"].(string)
	return tok
}

func mautrixOver(t testing.TB, rt http.RoundTripper, base string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(base, "", "")
	if err != nil {
		t.Fatal(err)
	}
	cli.Client = &http.Client{Transport: rt, Timeout: 60 * time.Second}
	return cli
}
