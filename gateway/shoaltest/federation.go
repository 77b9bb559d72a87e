package shoaltest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/gateway"
)

// CA is a certificate authority made for one test: it issues the leaf
// certificates of the test's nodes, and the nodes' federation clients trust
// it (and nothing else).
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	PEM  []byte
}

// NewCA makes a test CA.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "shoal test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{cert: cert, key: key, pool: pool, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Pool trusts the CA.
func (ca *CA) Pool() *x509.CertPool { return ca.pool }

// Issue writes a key and a certificate for names (DNS names or IP
// addresses) into dir and returns their paths.
func (ca *CA) Issue(t testing.TB, dir string, names ...string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "leaf.crt"), filepath.Join(dir, "leaf.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// Federation is a set of test nodes that reach one another over HTTPS on
// loopback under made-up server names (a.test, b.test, ...): each node's
// certificate comes from one test CA, and the nodes' federation clients
// resolve the names through this Federation's table (A records → 127.0.0.1,
// SRV _matrix-fed._tcp records → the node's port). Discovery, TLS
// verification and request signing are the real ones.
type Federation struct {
	CA    *CA
	mu    sync.Mutex
	ports map[string]int
}

// NewFederation makes an empty federation with its CA.
func NewFederation(t testing.TB) *Federation {
	return &Federation{CA: NewCA(t), ports: map[string]int{}}
}

// Start runs a node named name in the federation.
func (f *Federation) Start(t testing.TB, name string, opts ...Option) *Node {
	t.Helper()
	certDir := t.TempDir()
	certFile, keyFile := f.CA.Issue(t, certDir, name)
	all := append([]Option{func(cfg *gateway.NodeConfig) {
		cfg.Gateway.ServerName = name
		cfg.TLSListen = []string{"127.0.0.1:0"}
		cfg.TLSCert, cfg.TLSKey = certFile, keyFile
		cfg.Gateway.Federation = f.ClientConfig()
	}}, opts...)
	n := Start(t, all...)
	_, port, err := net.SplitHostPort(n.TLSAddrs[0])
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	f.mu.Lock()
	f.ports[name] = p
	f.mu.Unlock()
	return n
}

// ClientConfig is the federation configuration of the federation's nodes:
// the test CA as the only root, loopback allowed, and the federation's
// name table as the resolver. /.well-known is asked on a port nothing
// listens on, so discovery falls through to SRV.
func (f *Federation) ClientConfig() gateway.FederationConfig {
	return gateway.FederationConfig{
		RootCAs:       f.CA.Pool(),
		AllowPrivate:  true,
		LookupHost:    f.LookupHost,
		LookupSRV:     f.LookupSRV,
		WellKnownPort: 1,
	}
}

// LookupHost resolves the federation's names to 127.0.0.1.
func (f *Federation) LookupHost(_ context.Context, host string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.ports[host]; ok || host == "127.0.0.1" {
		return []string{"127.0.0.1"}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// LookupSRV answers _matrix-fed._tcp.<name> with the node's port.
func (f *Federation) LookupSRV(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.ports[name]; ok && service == "matrix-fed" && proto == "tcp" {
		return fmt.Sprintf("_%s._%s.%s.", service, proto, name), []*net.SRV{{Target: name + ".", Port: uint16(p)}}, nil
	}
	return "", nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// Add puts a server that is not a shoal node (a test's fake peer listening
// on 127.0.0.1:port) in the federation's name table.
func (f *Federation) Add(name string, port int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ports[name] = port
}
