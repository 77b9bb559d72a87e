package fedclient_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/gateway/fedclient"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

func TestParseXMatrix(t *testing.T) {
	good := []struct {
		h    string
		want fedclient.XMatrix
	}{
		{`X-Matrix origin="a.test",destination="b.test",key="ed25519:k1",sig="c2ln"`,
			fedclient.XMatrix{Origin: "a.test", Destination: "b.test", Key: "ed25519:k1", Sig: "c2ln"}},
		// Unquoted tokens (colons allowed), names in any case, spaces and
		// tabs around commas, unknown parameters, escapes in quotes.
		{"x-matrix   Origin=a.test:8448 ,\tKEY=ed25519:k1, sig=\"c\\2ln\", extra=\"x\"",
			fedclient.XMatrix{Origin: "a.test:8448", Key: "ed25519:k1", Sig: "c2ln"}},
	}
	for _, c := range good {
		got, err := fedclient.ParseXMatrix(c.h)
		if err != nil || got != c.want {
			t.Errorf("%q: got %+v, %v", c.h, got, err)
		}
	}
	bad := []string{
		``,
		`Bearer abc`,
		`X-Matrix`,
		`X-Matrix origin="a.test",key="ed25519:k1"`,            // no sig
		`X-Matrix origin="a.test,key="ed25519:k1",sig="x"`,     // unbalanced quote
		`X-Matrix origin=a test,key=ed25519:k1,sig=x`,          // no comma
		`X-Matrix origin="bad host!",key="ed25519:k1",sig="x"`, // not a server name
		`X-Matrix origin="a.test",origin="b.test",key=k,sig=x`, // repeated
		`X-Matrix origin=a.test,key=ed25519:k1,sig=x/y{`,       // not a token
		`X-Matrix origin="a.test",key="k",sig="` + strings.Repeat("A", 5000) + `"`,
	}
	for _, h := range bad {
		if _, err := fedclient.ParseXMatrix(h); !errors.Is(err, fedclient.ErrBadAuthorization) {
			t.Errorf("%q: accepted (%v)", h, err)
		}
	}
}

func testIdentity(name string) *actors.ServerIdentity {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	return &actors.ServerIdentity{ServerName: name, KeyID: "ed25519:t1", PrivateKey: priv}
}

func TestSignVerifyRequest(t *testing.T) {
	id := testIdentity("a.test")
	pub := id.PrivateKey.Public().(ed25519.PublicKey)
	body := []byte(`{"b":[1,2],"a":"\u00e9"}`)
	auth, err := fedclient.SignRequest(id, "PUT", "/_matrix/federation/v1/send/1?x=y", "b.test", body)
	if err != nil {
		t.Fatal(err)
	}
	x, err := fedclient.ParseXMatrix(auth)
	if err != nil {
		t.Fatal(err)
	}
	// The receiver re-encodes the body canonically: spacing and key order
	// do not matter.
	if err := fedclient.VerifyRequest(x, pub, "PUT", "/_matrix/federation/v1/send/1?x=y", "b.test", []byte(`{ "a":"é", "b":[1,2] }`)); err != nil {
		t.Fatalf("verify: %v", err)
	}
	for name, f := range map[string]func() error{
		"method": func() error {
			return fedclient.VerifyRequest(x, pub, "POST", "/_matrix/federation/v1/send/1?x=y", "b.test", body)
		},
		"uri": func() error {
			return fedclient.VerifyRequest(x, pub, "PUT", "/_matrix/federation/v1/send/1", "b.test", body)
		},
		"dest": func() error {
			return fedclient.VerifyRequest(x, pub, "PUT", "/_matrix/federation/v1/send/1?x=y", "c.test", body)
		},
		"body": func() error {
			return fedclient.VerifyRequest(x, pub, "PUT", "/_matrix/federation/v1/send/1?x=y", "b.test", []byte(`{}`))
		},
		"nobody": func() error {
			return fedclient.VerifyRequest(x, pub, "PUT", "/_matrix/federation/v1/send/1?x=y", "b.test", nil)
		},
	} {
		if f() == nil {
			t.Errorf("changed %s still verifies", name)
		}
	}
}

func TestPublicAddr(t *testing.T) {
	for s, want := range map[string]bool{
		"8.8.8.8": true, "2606:4700::1111": true, "1.1.1.1": true,
		"127.0.0.1": false, "10.1.2.3": false, "172.16.0.1": false, "192.168.1.1": false,
		"169.254.169.254": false, "0.0.0.0": false, "100.64.0.1": false, "::1": false,
		"::": false, "fe80::1": false, "fc00::1": false, "::ffff:127.0.0.1": false,
		"224.0.0.1": false, "255.255.255.255": false,
	} {
		if got := fedclient.PublicAddr(netip.MustParseAddr(s)); got != want {
			t.Errorf("%s: public=%v, want %v", s, got, want)
		}
	}
}

func loopback(_ context.Context, host string) ([]string, error) { return []string{"127.0.0.1"}, nil }

func noSRV(context.Context, string, string, string) (string, []*net.SRV, error) {
	return "", nil, &net.DNSError{Err: "no such host", IsNotFound: true}
}

// Without AllowPrivate, discovery that ends on loopback (or a private IP
// literal) is refused at dial time.
func TestPrivateAddressRefused(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	c := fedclient.New(fedclient.Config{LookupHost: loopback, LookupSRV: noSRV, WellKnownPort: 1})
	defer c.Close()
	for _, dest := range []string{"b.test:" + port, "127.0.0.1:" + port, "[::1]:" + port, "10.0.0.1:8448", "b.test"} {
		_, err := c.Do(context.Background(), fedclient.Request{Method: "GET", Destination: dest, URI: "/_matrix/federation/v1/version"})
		if !errors.Is(err, fedclient.ErrPrivateAddress) {
			t.Errorf("%s: %v, want ErrPrivateAddress", dest, err)
		}
	}
}

// peer is a TLS server with a certificate of the test CA for names; it
// answers /.well-known/matrix/server with wellKnown (when set) and echoes
// the Host header on the federation version endpoint.
type peer struct {
	port      int
	wellKnown string
	wkHits    atomic.Int32
}

func startPeer(t *testing.T, ca *shoaltest.CA, wellKnown string, names ...string) *peer {
	t.Helper()
	p := &peer{wellKnown: wellKnown}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/matrix/server":
			p.wkHits.Add(1)
			if p.wellKnown == "" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Cache-Control", "max-age=3600")
			_ = json.NewEncoder(w).Encode(map[string]string{"m.server": strings.ReplaceAll(p.wellKnown, "PORT", strconv.Itoa(p.port))})
		case "/_matrix/federation/v1/version":
			_ = json.NewEncoder(w).Encode(map[string]string{"host": r.Host, "auth": r.Header.Get("Authorization"), "uri": r.RequestURI})
		default:
			http.NotFound(w, r)
		}
	}))
	cert, key := ca.Issue(t, t.TempDir(), names...)
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{kp}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p.port, _ = strconv.Atoi(port)
	return p
}

func get(t *testing.T, c *fedclient.Client, dest string, signed bool) (map[string]string, error) {
	t.Helper()
	body, err := c.Do(context.Background(), fedclient.Request{Method: "GET", Destination: dest, URI: "/_matrix/federation/v1/version?a=b%20c", Signed: signed})
	if err != nil {
		return nil, err
	}
	var out map[string]string
	return out, json.Unmarshal(body, &out)
}

// Discovery through /.well-known: the delegated name (with its port) is
// the Host header and the certificate's name; the answer is cached.
func TestWellKnownDelegation(t *testing.T) {
	ca := shoaltest.NewCA(t)
	p := startPeer(t, ca, "delegated.test:PORT", "wk.test", "delegated.test")
	c := fedclient.New(fedclient.Config{RootCAs: ca.Pool(), AllowPrivate: true, LookupHost: loopback, LookupSRV: noSRV,
		WellKnownPort: p.port, Identity: testIdentity("me.test")})
	defer c.Close()
	for range 3 {
		out, err := get(t, c, "wk.test", true)
		if err != nil {
			t.Fatal(err)
		}
		if want := "delegated.test:" + strconv.Itoa(p.port); out["host"] != want {
			t.Fatalf("Host %q, want %q", out["host"], want)
		}
		if out["uri"] != "/_matrix/federation/v1/version?a=b%20c" {
			t.Fatalf("URI %q", out["uri"])
		}
		// Signed for the server name, not the delegated one.
		x, err := fedclient.ParseXMatrix(out["auth"])
		if err != nil || x.Destination != "wk.test" || x.Origin != "me.test" {
			t.Fatalf("auth %q: %v", out["auth"], err)
		}
	}
	if n := p.wkHits.Load(); n != 1 {
		t.Fatalf("well-known fetched %d times, want 1 (cached)", n)
	}
}

// Without delegation, SRV _matrix-fed._tcp gives the port; Host and
// certificate are the server name's. A certificate for another name fails.
func TestSRVAndCertificateName(t *testing.T) {
	ca := shoaltest.NewCA(t)
	p := startPeer(t, ca, "", "srv.test")
	srv := func(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
		if service == "matrix-fed" && (name == "srv.test" || name == "wrong.test") {
			return "", []*net.SRV{{Target: "target.test.", Port: uint16(p.port)}}, nil
		}
		return noSRV(context.Background(), service, proto, name)
	}
	c := fedclient.New(fedclient.Config{RootCAs: ca.Pool(), AllowPrivate: true, LookupHost: loopback, LookupSRV: srv, WellKnownPort: p.port})
	defer c.Close()
	out, err := get(t, c, "srv.test", false)
	if err != nil {
		t.Fatal(err)
	}
	if out["host"] != "srv.test" {
		t.Fatalf("Host %q", out["host"])
	}
	if _, err := get(t, c, "wrong.test", false); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("certificate for another name accepted: %v", err)
	}
	// A CA the client does not trust.
	other := fedclient.New(fedclient.Config{RootCAs: shoaltest.NewCA(t).Pool(), AllowPrivate: true, LookupHost: loopback, LookupSRV: srv, WellKnownPort: p.port})
	defer other.Close()
	if _, err := get(t, other, "srv.test", false); err == nil {
		t.Fatal("untrusted CA accepted")
	}
	// Remote errors come back as HTTPError.
	_, err = c.Do(context.Background(), fedclient.Request{Method: "GET", Destination: "srv.test", URI: "/_matrix/federation/v1/nothing"})
	var he *fedclient.HTTPError
	if !errors.As(err, &he) || he.Status != http.StatusNotFound {
		t.Fatalf("404: %v", err)
	}
}

// With RootCAs unset the client uses the system roots, which on Linux Go
// reads from SSL_CERT_FILE when it is set: checked in a child process,
// since the system pool is loaded once per process.
func TestSSLCertFile(t *testing.T) {
	if addr := os.Getenv("FEDCLIENT_CHILD_ADDR"); addr != "" {
		c := fedclient.New(fedclient.Config{AllowPrivate: true, LookupHost: loopback, LookupSRV: noSRV, WellKnownPort: 1})
		defer c.Close()
		if _, err := get(t, c, addr, false); err != nil {
			t.Fatalf("child: %v", err)
		}
		return
	}
	ca := shoaltest.NewCA(t)
	p := startPeer(t, ca, "", "ca.test")
	dir := t.TempDir()
	good, wrong := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "other.pem")
	if err := os.WriteFile(good, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wrong, shoaltest.NewCA(t).PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(file string) error {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSSLCertFile$", "-test.count=1")
		cmd.Env = append(os.Environ(), "FEDCLIENT_CHILD_ADDR=ca.test:"+strconv.Itoa(p.port), "SSL_CERT_FILE="+file, "SSL_CERT_DIR="+dir+"/none")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return errors.New(string(out))
		}
		return nil
	}
	if err := run(good); err != nil {
		t.Fatalf("SSL_CERT_FILE naming the CA: %v", err)
	}
	if err := run(wrong); err == nil {
		t.Fatal("SSL_CERT_FILE naming another CA: accepted")
	}
}
