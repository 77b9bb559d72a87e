package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
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
	"github.com/shoal-chat/shoal/eventgraph"
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
	// TLSListen serves client and federation APIs over HTTPS (HTTP/1.1 and
	// HTTP/2 on TCP) and HTTP/3 (QUIC, on the same port over UDP).
	TLSListen []string
	// FederationListen serves only the federation API, like TLSListen.
	FederationListen []string
	// TLSCert and TLSKey are the operator's certificate; without them (and
	// without ACME) a self-signed one is made in the data dir.
	TLSCert string
	TLSKey  string
	// ACME obtains and renews certificates for ACME.Domains; names it does
	// not manage get the operator's or the self-signed certificate.
	ACME ACMEConfig
	// AdminListen serves Prometheus metrics (/metrics) and pprof
	// (/debug/pprof/) — keep it on loopback ("" for none).
	AdminListen string
	// Kinds are the actor kinds; nil means all of shoal's.
	Kinds map[string]cluster.Producer
	// Cluster makes the node a member of a multi-node cluster; nil runs a
	// one-node cluster holding every partition.
	Cluster *cluster.ClusterConfig
	// Shared, when set, runs this node's gateway on another node's actors
	// instead of starting its own: a second gateway of one cluster (until
	// clustering lands, the stand-in for a second node, for tests).
	Shared  *cluster.Node
	Storage storage.Options
	Log     *slog.Logger
}

// Node is a running shoal node: its actors and its listeners.
type Node struct {
	Cluster *cluster.Node
	Gateway *Server
	// The bound addresses (useful with port 0); HTTP/3 listens on the
	// same ports as TLSAddrs and FederationAddrs.
	ClientAddr      string
	TLSAddrs        []string
	FederationAddrs []string
	AdminAddr       string

	log   *slog.Logger
	errCh chan error
	certs *certManager
	// ownsCluster is false for a gateway on a Shared cluster node.
	ownsCluster bool
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
	// A clustered node joins first: a new member receives the cluster's
	// signing key and registration secret into its data dir.
	joined, err := joinCluster(cfg)
	if err != nil {
		return nil, err
	}
	running := false
	defer func() {
		if joined != nil && !running {
			_ = joined.Stop(context.Background())
		}
	}()
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
	fed, err := newFederation(cfg.Gateway, ident)
	if err != nil {
		return nil, err
	}
	cfg.Gateway.Federation.built = fed
	kinds = withServerKind(kinds, fed)
	kinds = withFedQueueKind(kinds, fed)
	kinds = withPushSender(kinds, cfg.Gateway)
	m := newMetrics()
	storageOpts := cfg.Storage
	if prev := storageOpts.OnCommit; prev != nil {
		storageOpts.OnCommit = func(st storage.CommitStats) { m.observeCommit(st); prev(st) }
	} else {
		storageOpts.OnCommit = m.observeCommit
	}
	cn := cfg.Shared
	if joined != nil {
		if err := joined.Run(ident, kinds, storageOpts); err != nil {
			return nil, err
		}
		cn = joined
	} else if cn == nil {
		cn, err = cluster.Start(cluster.Config{
			DataDir:    cfg.DataDir,
			Partitions: cfg.Partitions,
			Kinds:      kinds,
			Server:     ident,
			Log:        cfg.Log,
			Storage:    storageOpts,
		})
		if err != nil {
			return nil, err
		}
	}
	running = true
	m.gaugeFunc("shoal_actors_active", "Actor activations on this node.", func() float64 { return float64(cn.ActiveActors()) })
	m.gaugeFunc("shoal_actor_mailbox_depth", "Messages waiting in the mailboxes of this node's actors.", func() float64 { return float64(cn.QueuedMessages()) })
	n := &Node{Cluster: cn, log: cfg.Log, errCh: make(chan error, 1), ownsCluster: cfg.Shared == nil}
	n.Gateway = newServer(cfg.Gateway, cn, ident, m)
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
	if err := n.startTLS(cfg, cn); err != nil {
		return fail(err)
	}
	if cfg.AdminListen != "" {
		ln, err := net.Listen("tcp", cfg.AdminListen)
		if err != nil {
			return fail(fmt.Errorf("gateway: listen %s (admin): %w", cfg.AdminListen, err))
		}
		n.AdminAddr = ln.Addr().String()
		go func() { n.report(n.Gateway.ServeAdmin(ln)) }()
	}
	return n, nil
}

// startTLS binds every HTTPS address over TCP and UDP, then serves HTTPS
// and HTTP/3 on them with the operator's, the self-signed or (with ACME)
// certmagic's certificates. ACME starts last: its challenges are answered
// by these listeners.
func (n *Node) startTLS(cfg NodeConfig, cn *cluster.Node) error {
	type pair struct {
		tcp net.Listener
		udp net.PacketConn
		fed bool
	}
	var pairs []pair
	bind := func(addrs []string, fed bool, bound *[]string) error {
		for _, addr := range addrs {
			ln, pc, err := listenTLSPair(addr)
			if err != nil {
				return err
			}
			pairs = append(pairs, pair{ln, pc, fed})
			*bound = append(*bound, ln.Addr().String())
		}
		return nil
	}
	err := bind(cfg.TLSListen, false, &n.TLSAddrs)
	if err == nil {
		err = bind(cfg.FederationListen, true, &n.FederationAddrs)
	}
	if err == nil && len(pairs) == 0 && len(cfg.ACME.Domains) > 0 {
		err = errors.New("gateway: ACME needs a TLS listener to answer its challenges on")
	}
	if err != nil || len(pairs) == 0 {
		for _, p := range pairs {
			p.tcp.Close()
			p.udp.Close()
		}
		return err
	}
	var tlsConf *tls.Config
	if len(cfg.ACME.Domains) > 0 {
		fallback, err := loadCertificate(cfg.TLSCert, cfg.TLSKey, cfg.DataDir, cfg.Gateway.ServerName)
		if err == nil {
			// The CA reaches port 443: a listener on 443 if there is one,
			// else the first, to which 443 must be forwarded.
			challenge := pairs[0].tcp.Addr().String()
			for _, p := range pairs {
				if portOf(p.tcp.Addr().String()) == 443 {
					challenge = p.tcp.Addr().String()
					break
				}
			}
			n.certs, err = newCertManager(cfg.ACME, cn, challenge, &fallback, n.log)
		}
		if err == nil {
			tlsConf = n.certs.tlsConfig()
		}
	} else {
		tlsConf, err = TLSConfig(cfg.TLSCert, cfg.TLSKey, cfg.DataDir, cfg.Gateway.ServerName)
	}
	if err != nil {
		for _, p := range pairs {
			p.tcp.Close()
			p.udp.Close()
		}
		return err
	}
	for _, p := range pairs {
		opts := TLSOptions{AltSvc: AltSvcFor(portOf(p.tcp.Addr().String())), FederationOnly: p.fed}
		go func() { n.report(n.Gateway.ServeTLS(p.tcp, tlsConf, opts)) }()
		go func() { n.report(n.Gateway.ServeQUIC(p.udp, tlsConf, p.fed)) }()
	}
	if n.certs != nil {
		return n.certs.start(cfg.ACME.Domains)
	}
	return nil
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
	if n.certs != nil {
		if err := n.certs.stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if n.Cluster != nil && n.ownsCluster {
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
		// Key versions are [a-zA-Z0-9_] only: other servers refuse keys
		// whose IDs use anything else (base64url's '-' among them).
		fullID, err := eventgraph.NewKeyID(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("gateway: generate signing key ID: %w", err)
		}
		keyID := strings.TrimPrefix(fullID, eventgraph.KeyAlgorithmEd25519+":")
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
	if _, _, err := eventgraph.ParseKeyID("ed25519:" + f[1]); err != nil {
		return nil, fmt.Errorf("gateway: %s: %w", path, err)
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
