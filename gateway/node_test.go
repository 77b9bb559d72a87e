package gateway_test

import (
	"crypto/ed25519"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

func withTLS(cfg *gateway.NodeConfig) { cfg.TLSListen = []string{"127.0.0.1:0"} }

// The TLS listener serves HTTP/2 and HTTP/1.1 with a self-signed
// certificate kept in the data dir, and /_matrix/key/v2/server publishes
// the signing key, self-signed, over it.
func TestTLSListenerAndServerKeys(t *testing.T) {
	node := shoaltest.Start(t, withTLS)
	if len(node.TLSAddrs) != 1 {
		t.Fatalf("TLS addresses: %v", node.TLSAddrs)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
	}}
	resp, err := client.Get("https://" + node.TLSAddrs[0] + "/_matrix/key/v2/server")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil || resp.TLS.Version != tls.VersionTLS12 {
		t.Fatalf("status %d, tls %+v", resp.StatusCode, resp.TLS)
	}
	var keys struct {
		ServerName   string `json:"server_name"`
		ValidUntilTS int64  `json:"valid_until_ts"`
		VerifyKeys   map[string]struct {
			Key string `json:"key"`
		} `json:"verify_keys"`
	}
	if err := json.Unmarshal(body, &keys); err != nil {
		t.Fatal(err)
	}
	if keys.ServerName != node.ServerName() || keys.ValidUntilTS <= time.Now().UnixMilli() || len(keys.VerifyKeys) != 1 {
		t.Fatalf("key response: %s", body)
	}
	for keyID, k := range keys.VerifyKeys {
		pub, err := base64.RawStdEncoding.DecodeString(k.Key)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			t.Fatalf("bad key %q", k.Key)
		}
		if err := eventgraph.VerifyJSON(body, node.ServerName(), keyID, pub); err != nil {
			t.Fatalf("key response signature: %v", err)
		}
	}

	// HTTP/2 by ALPN and TLS 1.3 on the same listener.
	h2 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}, ForceAttemptHTTP2: true,
	}}
	resp, err = h2.Get("https://" + node.TLSAddrs[0] + "/_matrix/client/versions")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.TLS.Version != tls.VersionTLS13 {
		t.Fatalf("negotiated %s over %x", resp.Proto, resp.TLS.Version)
	}

	// The signing key is the same after a restart.
	node.Restart()
	resp, err = client.Get("https://" + node.TLSAddrs[0] + "/_matrix/key/v2/server")
	if err != nil {
		t.Fatal(err)
	}
	body2, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var keys2 struct {
		VerifyKeys map[string]json.RawMessage `json:"verify_keys"`
	}
	_ = json.Unmarshal(body2, &keys2)
	for k := range keys.VerifyKeys {
		if _, ok := keys2.VerifyKeys[k]; !ok {
			t.Fatalf("signing key changed across restart: %s", body2)
		}
	}
}

func TestCORSAndDiscovery(t *testing.T) {
	node := shoaltest.Start(t)
	req, _ := http.NewRequest(http.MethodOptions, node.BaseURL+"/_matrix/client/v3/createRoom", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "*" ||
		resp.Header.Get("Access-Control-Allow-Methods") != "GET, HEAD, POST, PUT, DELETE, OPTIONS" {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	resp, err = http.Get(node.BaseURL + "/_matrix/client/versions")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Versions []string `json:"versions"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&v)
	resp.Body.Close()
	if len(v.Versions) == 0 {
		t.Fatal("no versions")
	}
}

// Generated key IDs use only [a-zA-Z0-9_]: other servers refuse anything
// else, and a random '-' once made federation tests flaky.
func TestSigningKeyIDGrammar(t *testing.T) {
	for i := 0; i < 200; i++ {
		ident, err := gateway.LoadOrCreateSigningKey(t.TempDir(), "k.test")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := eventgraph.ParseKeyID(ident.KeyID); err != nil {
			t.Fatalf("generated key ID %q: %v", ident.KeyID, err)
		}
	}
}
