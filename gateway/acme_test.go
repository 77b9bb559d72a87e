package gateway_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"

	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// The domain the tests obtain certificates for; the test DNS server
// resolves every name to 127.0.0.1.
const acmeDomain = "shoal.test"

// pebbleCA is Pebble, Let's Encrypt's test CA, run in this process on
// loopback: its ACME server (WFE) behind an httptest TLS server, its
// validation authority (VA) doing real TLS-ALPN-01 challenges against
// shoal's TLS listener and resolving names with a test DNS server.
type pebbleCA struct {
	dirURL string
	// apiRoots trust the ACME server's own HTTPS (--acme-ca-root).
	apiRoots *x509.CertPool
	// issuerRoots trust the certificates Pebble issues.
	issuerRoots *x509.CertPool
	orders      atomic.Int64

	api   http.Handler
	ready chan struct{} // closed once api is set
}

// statusWriter remembers the status code written through it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// newPebble starts the CA's HTTPS server; its requests wait until start
// gives the CA the port to validate on, which is known only once the node
// listens (a node begins its ACME order as it starts).
func newPebble(t *testing.T) *pebbleCA {
	t.Helper()
	p := &pebbleCA{apiRoots: x509.NewCertPool(), issuerRoots: x509.NewCertPool(), ready: make(chan struct{})}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-p.ready:
		case <-r.Context().Done():
			return
		}
		if r.Method == http.MethodPost && r.URL.Path == "/order-plz" {
			// Count the orders Pebble created: by default it refuses 5% of
			// nonces, and a client's retry of a refused request is no
			// second order.
			rec := &statusWriter{ResponseWriter: w}
			p.api.ServeHTTP(rec, r)
			if rec.status == http.StatusCreated {
				p.orders.Add(1)
			}
			return
		}
		p.api.ServeHTTP(w, r)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	p.dirURL = srv.URL + wfe.DirectoryPath
	p.apiRoots.AddCert(srv.Certificate())
	return p
}

// start makes the CA validate on challengePort and issue certificates
// valid for validity.
func (p *pebbleCA) start(t *testing.T, challengePort int, validity time.Duration) {
	t.Helper()
	t.Setenv("PEBBLE_VA_NOSLEEP", "1") // no random pause before each validation
	logger := log.New(io.Discard, "", 0)
	if os.Getenv("SHOAL_TEST_LOG") != "" {
		logger = log.New(os.Stderr, "pebble ", log.LstdFlags)
	}
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1,
		map[string]ca.Profile{"default": {ValidityPeriod: uint64(validity.Seconds())}})
	validator := va.New(logger, 0, challengePort, false, startTestDNS(t), store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	p.issuerRoots.AddCert(authority.GetRootCert(0).Cert)
	p.api = front.Handler()
	close(p.ready)
}

// startTestDNS answers A 127.0.0.1 for every name, over TCP (Pebble's VA
// asks its resolver over TCP).
func startTestDNS(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, qq := range q.Question {
			if qq.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String()
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	return n
}

func withACME(p *pebbleCA, addr string, tune func(*gateway.ACMEConfig)) shoaltest.Option {
	return func(cfg *gateway.NodeConfig) {
		cfg.TLSListen = []string{addr}
		cfg.ACME = gateway.ACMEConfig{Domains: []string{acmeDomain}, CA: p.dirURL, CARoots: p.apiRoots,
			Email: "ops@" + acmeDomain}
		if tune != nil {
			tune(&cfg.ACME)
		}
	}
}

// servedCert handshakes with addr for the ACME domain and returns the leaf
// if it chains to Pebble's root, or nil (not there yet).
func servedCert(p *pebbleCA, addr string) *x509.Certificate {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{ServerName: acmeDomain, RootCAs: p.issuerRoots, NextProtos: []string{"h2"}})
	if err != nil {
		return nil
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// waitCert waits until addr serves a certificate from Pebble that accept
// likes.
func waitCert(t *testing.T, p *pebbleCA, addr string, within time.Duration, accept func(*x509.Certificate) bool) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if c := servedCert(p, addr); c != nil && accept(c) {
			return c
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s served no acceptable certificate from Pebble within %v", addr, within)
	return nil
}

// A node obtains a certificate from Pebble through a real TLS-ALPN-01
// challenge answered by its own TLS listener, serves it (chained to
// Pebble's root) on HTTPS and HTTP/3, keeps serving its self-signed
// certificate to clients that name no managed domain, and renews the
// certificate before it expires.
func TestACMEObtainAndRenew(t *testing.T) {
	pebble := newPebble(t)
	node := shoaltest.Start(t, withACME(pebble, "127.0.0.1:0", func(a *gateway.ACMEConfig) {
		a.RenewCheckInterval = time.Second
	}))
	addr := node.TLSAddrs[0]
	// A 30-second certificate: the renewal window comes within the test.
	pebble.start(t, portOf(t, addr), 30*time.Second)
	first := waitCert(t, pebble, addr, 60*time.Second, func(*x509.Certificate) bool { return true })
	if first.DNSNames[0] != acmeDomain {
		t.Fatalf("certificate for %v", first.DNSNames)
	}

	// HTTP/3 serves the same certificate, verified against Pebble's root.
	tr := newTransports(pebble.issuerRoots)
	defer tr.close()
	tr.h3.TLSClientConfig.ServerName = acmeDomain
	req, _ := http.NewRequest("GET", "https://"+addr+"/_matrix/client/versions", nil)
	resp, err := tr.h3.RoundTrip(req)
	if err != nil {
		t.Fatalf("HTTP/3 with the ACME certificate: %v", err)
	}
	resp.Body.Close()
	// (The round trip verified the chain to Pebble's root for shoal.test.)
	if resp.ProtoMajor != 3 {
		t.Fatalf("served over %s", resp.Proto)
	}

	// Clients that reach the node as localhost get the self-signed one.
	conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "localhost", RootCAs: node.TLSRoots()})
	if err != nil {
		t.Fatalf("fallback certificate: %v", err)
	}
	conn.Close()

	renewed := waitCert(t, pebble, addr, 60*time.Second, func(c *x509.Certificate) bool {
		return c.SerialNumber.Cmp(first.SerialNumber) != 0
	})
	if !renewed.NotBefore.After(first.NotBefore) && !renewed.NotAfter.After(first.NotAfter) {
		t.Fatalf("renewed certificate is not newer: %v–%v after %v–%v", renewed.NotBefore, renewed.NotAfter, first.NotBefore, first.NotAfter)
	}
	t.Logf("obtained %x, renewed as %x; %d orders", first.SerialNumber, renewed.SerialNumber, pebble.orders.Load())
}

// Two nodes of one cluster manage the same domain at the same time: they
// share the certs actor (storage and lock), so Pebble sees one order, and
// both serve the one certificate.
func TestACMETwoNodesOneOrder(t *testing.T) {
	pebble := newPebble(t)
	a := shoaltest.Start(t, withACME(pebble, "127.0.0.1:0", nil))
	b := shoaltest.Start(t, withACME(pebble, "127.0.0.1:0", nil), func(cfg *gateway.NodeConfig) {
		cfg.Shared = a.Cluster
	})
	addrA := a.TLSAddrs[0]
	// Both nodes are waiting for the CA by now: they race for the order.
	pebble.start(t, portOf(t, addrA), 90*24*time.Hour)
	certA := waitCert(t, pebble, addrA, 60*time.Second, func(*x509.Certificate) bool { return true })
	certB := waitCert(t, pebble, b.TLSAddrs[0], 60*time.Second, func(*x509.Certificate) bool { return true })
	if certA.SerialNumber.Cmp(certB.SerialNumber) != 0 {
		t.Fatalf("nodes serve different certificates: %x and %x", certA.SerialNumber, certB.SerialNumber)
	}
	if n := pebble.orders.Load(); n != 1 {
		t.Fatalf("Pebble saw %d orders, want 1", n)
	}
}
