package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/cluster"
	"github.com/shoal-chat/shoal/storage"
)

// NodeConfig is everything needed to run one shoal node: the gateway's
// settings, where its data lives and which addresses it listens on.
type NodeConfig struct {
	Gateway    Config
	DataDir    string
	Partitions uint32
	// ClientListen serves the client API over plain HTTP ("" for none).
	ClientListen string
	// TLSListen serves client and federation APIs over HTTPS.
	TLSListen []string
	TLSCert   string
	TLSKey    string
	// Kinds are the actor kinds; nil means all of shoal's.
	Kinds   map[string]cluster.Producer
	Storage storage.Options
	Log     *slog.Logger
}

// Node is a running shoal node: its actors and its listeners.
type Node struct {
	Cluster *cluster.Node
	Gateway *Server
	// ClientAddr and TLSAddrs are the bound addresses (useful with port 0).
	ClientAddr string
	TLSAddrs   []string

	log   *slog.Logger
	errCh chan error
}

// StartNode opens the data directory, starts the node's actors and its
// listeners, and returns once every listener accepts connections.
func StartNode(cfg NodeConfig) (*Node, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cfg.Gateway.Log = cfg.Log
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("gateway: data dir: %w", err)
	}
	ident, err := LoadOrCreateSigningKey(cfg.DataDir, cfg.Gateway.ServerName)
	if err != nil {
		return nil, err
	}
	if cfg.Gateway.RegistrationSharedSecret == "" {
		secret, err := loadOrCreateSecret(filepath.Join(cfg.DataDir, "registration_shared_secret"))
		if err != nil {
			return nil, err
		}
		cfg.Gateway.RegistrationSharedSecret = secret
	}
	kinds := cfg.Kinds
	if kinds == nil {
		kinds = actors.Kinds()
	}
	cn, err := cluster.Start(cluster.Config{
		DataDir:    cfg.DataDir,
		Partitions: cfg.Partitions,
		Kinds:      kinds,
		Server:     ident,
		Log:        cfg.Log,
		Storage:    cfg.Storage,
	})
	if err != nil {
		return nil, err
	}
	n := &Node{Cluster: cn, log: cfg.Log, errCh: make(chan error, 1+len(cfg.TLSListen))}
	n.Gateway = New(cfg.Gateway, cn, ident)
	fail := func(err error) (*Node, error) {
		_ = n.Stop(context.Background())
		return nil, err
	}
	if cfg.ClientListen != "" {
		ln, err := net.Listen("tcp", cfg.ClientListen)
		if err != nil {
			return fail(fmt.Errorf("gateway: listen %s: %w", cfg.ClientListen, err))
		}
		n.ClientAddr = ln.Addr().String()
		go func() { n.report(n.Gateway.ServePlain(ln)) }()
	}
	if len(cfg.TLSListen) > 0 {
		tlsConf, err := TLSConfig(cfg.TLSCert, cfg.TLSKey, cfg.DataDir, cfg.Gateway.ServerName)
		if err != nil {
			return fail(err)
		}
		for _, addr := range cfg.TLSListen {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fail(fmt.Errorf("gateway: listen %s: %w", addr, err))
			}
			n.TLSAddrs = append(n.TLSAddrs, ln.Addr().String())
			go func() { n.report(n.Gateway.ServeTLS(ln, tlsConf)) }()
		}
	}
	return n, nil
}

func (n *Node) report(err error) {
	if err != nil {
		select {
		case n.errCh <- err:
		default:
		}
	}
}

// Errors delivers a listener's failure.
func (n *Node) Errors() <-chan error { return n.errCh }

// Stop drains the listeners (bounded by ctx), then stops the actors, which
// finish what they are doing, and closes the partitions.
func (n *Node) Stop(ctx context.Context) error {
	var errs []error
	if n.Gateway != nil {
		if err := n.Gateway.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if n.Cluster != nil {
		if err := n.Cluster.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// LoadOrCreateSigningKey reads the server's ed25519 signing key from dir,
// creating it on first start. The file holds "ed25519 <key id> <seed>".
func LoadOrCreateSigningKey(dir, serverName string) (*actors.ServerIdentity, error) {
	path := filepath.Join(dir, "signing.key")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		seed := make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return nil, fmt.Errorf("gateway: generate signing key: %w", err)
		}
		idb := make([]byte, 4)
		_, _ = rand.Read(idb)
		keyID := "a_" + base64.RawURLEncoding.EncodeToString(idb)[:4]
		data = []byte("ed25519 " + keyID + " " + base64.RawStdEncoding.EncodeToString(seed) + "\n")
		if err := writeFileAtomic(path, data, 0o600); err != nil {
			return nil, fmt.Errorf("gateway: write signing key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("gateway: read signing key: %w", err)
	}
	f := strings.Fields(string(data))
	if len(f) != 3 || f[0] != "ed25519" {
		return nil, fmt.Errorf("gateway: %s: expected \"ed25519 <key id> <seed>\"", path)
	}
	seed, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(f[2], "="))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("gateway: %s: bad key seed", path)
	}
	return &actors.ServerIdentity{ServerName: serverName, KeyID: "ed25519:" + f[1], PrivateKey: ed25519.NewKeyFromSeed(seed)}, nil
}

func loadOrCreateSecret(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(data)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("gateway: read %s: %w", path, err)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("gateway: generate secret: %w", err)
	}
	secret := base64.RawURLEncoding.EncodeToString(b)
	if err := writeFileAtomic(path, []byte(secret+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("gateway: write %s: %w", path, err)
	}
	return secret, nil
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// StopTimeout is how long a node may take to stop after SIGTERM.
const StopTimeout = 4 * time.Second
