// Package shoaltest starts real shoal nodes for tests: real actors, real
// bbolt files in a temporary directory and the real gateway on a loopback
// port, driven over HTTP like any client would.
package shoaltest

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway"
)

// Node is a running test node.
type Node struct {
	*gateway.Node
	t       testing.TB
	cfg     gateway.NodeConfig
	BaseURL string
}

// Option adjusts a test node's configuration.
type Option func(*gateway.NodeConfig)

// Start runs a node named "test.local" on 127.0.0.1:0 with rate limits off
// and stops it when the test ends.
func Start(t testing.TB, opts ...Option) *Node {
	t.Helper()
	cfg := gateway.NodeConfig{
		Gateway: gateway.Config{
			ServerName:       "test.local",
			Registration:     "open",
			PasswordHashCost: 4, // bcrypt's minimum: tests register many users
		},
		DataDir:      t.TempDir(),
		Partitions:   4,
		ClientListen: "127.0.0.1:0",
		Log:          testLogger(),
	}
	for _, o := range opts {
		o(&cfg)
	}
	n := &Node{t: t, cfg: cfg}
	n.start()
	t.Cleanup(func() { n.Stop() })
	return n
}

func testLogger() *slog.Logger {
	if os.Getenv("SHOAL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func (n *Node) start() {
	n.t.Helper()
	gn, err := gateway.StartNode(n.cfg)
	if err != nil {
		n.t.Fatalf("shoaltest: start node: %v", err)
	}
	n.Node = gn
	n.BaseURL = "http://" + gn.ClientAddr
	// Keep the ports across restarts so clients made before keep working.
	n.cfg.ClientListen = gn.ClientAddr
	if len(gn.TLSAddrs) > 0 {
		n.cfg.TLSListen = gn.TLSAddrs
	}
}

// WithTLS adds an HTTPS and HTTP/3 listener on a loopback port, with the
// node's self-signed certificate (see TLSRoots).
func WithTLS(cfg *gateway.NodeConfig) { cfg.TLSListen = []string{"127.0.0.1:0"} }

// TLSRoots trusts the node's self-signed certificate.
func (n *Node) TLSRoots() *x509.CertPool {
	n.t.Helper()
	pem, err := os.ReadFile(gateway.SelfSignedCertFile(n.cfg.DataDir))
	if err != nil {
		n.t.Fatalf("shoaltest: read the self-signed certificate: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		n.t.Fatal("shoaltest: no certificate in tls.crt")
	}
	return pool
}

// Stop stops the node (idempotent).
func (n *Node) Stop() {
	if n.Node == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Node.Stop(ctx); err != nil {
		n.t.Logf("shoaltest: stop: %v", err)
	}
	n.Node = nil
}

// Restart stops the node and starts it again on the same data and port.
func (n *Node) Restart() {
	n.t.Helper()
	n.Stop()
	n.start()
}

// ServerName is the node's server name.
func (n *Node) ServerName() string { return n.cfg.Gateway.ServerName }

// DataDir is the node's data directory.
func (n *Node) DataDir() string { return n.cfg.DataDir }

// Client returns an unauthenticated mautrix client for the node.
func (n *Node) Client() *mautrix.Client {
	n.t.Helper()
	cli, err := mautrix.NewClient(n.BaseURL, "", "")
	if err != nil {
		n.t.Fatal(err)
	}
	return cli
}

// Register creates a user with a password and returns a logged-in client.
func (n *Node) Register(localpart string) *mautrix.Client {
	n.t.Helper()
	cli := n.Client()
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{
		Username: localpart,
		Password: "password-" + localpart,
	})
	if err != nil {
		n.t.Fatalf("shoaltest: register %s: %v", localpart, err)
	}
	cli.UserID = resp.UserID
	cli.AccessToken = resp.AccessToken
	cli.DeviceID = resp.DeviceID
	return cli
}

// UserID is the full ID of localpart on this node.
func (n *Node) UserID(localpart string) id.UserID {
	return id.NewUserID(localpart, n.ServerName())
}
