package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/fedclient"
)

// FederationConfig configures the federation side of a node: the outbound
// client and where remote servers' keys come from.
type FederationConfig struct {
	// CAFile is a PEM file of the certificate authorities trusted for
	// other servers, instead of the system's roots ("" for the system's;
	// SSL_CERT_FILE works too).
	CAFile string
	// RootCAs, when set, overrides CAFile (tests build their CA in memory).
	RootCAs *x509.CertPool
	// AllowPrivate lets the client connect to loopback, private and
	// link-local addresses. Off in production: a peer could otherwise make
	// this server probe its own network.
	AllowPrivate bool
	// TrustedKeyServers are notaries asked for a server's keys when the
	// server cannot be reached; each must list the keys it signs with.
	TrustedKeyServers []TrustedKeyServer
	// LookupHost, LookupSRV and WellKnownPort replace the system resolver
	// and the /.well-known port (tests).
	LookupHost    func(ctx context.Context, host string) ([]string, error)
	LookupSRV     func(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
	WellKnownPort int

	// built is the client and fetcher StartNode made (the server actors
	// share them with the gateway).
	built *federation
}

// TrustedKeyServer is a notary and its signing keys (key ID → unpadded
// base64 ed25519 public key).
type TrustedKeyServer struct {
	ServerName string            `yaml:"server_name" json:"server_name"`
	VerifyKeys map[string]string `yaml:"verify_keys" json:"verify_keys"`
}

// federation is the outbound side: the client and the notaries. It is the
// server actors' actors.KeyFetcher.
type federation struct {
	client   *fedclient.Client
	notaries []actors.Notary
	// queueStats are the outbound queues' counters (federation_queue.go).
	queueStats *actors.FedQueueStats
}

// newFederation builds the outbound client of a node named by ident.
func newFederation(cfg Config, ident *actors.ServerIdentity) (*federation, error) {
	fc := cfg.Federation
	roots := fc.RootCAs
	if roots == nil && fc.CAFile != "" {
		pem, err := os.ReadFile(fc.CAFile)
		if err != nil {
			return nil, fmt.Errorf("gateway: federation CA file: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("gateway: federation CA file %s: no PEM certificate", fc.CAFile)
		}
	}
	f := &federation{}
	for _, t := range fc.TrustedKeyServers {
		if _, _, err := eventgraph.ParseServerName(t.ServerName); err != nil {
			return nil, fmt.Errorf("gateway: trusted key server: %w", err)
		}
		if len(t.VerifyKeys) == 0 {
			return nil, fmt.Errorf("gateway: trusted key server %s: verify_keys is required", t.ServerName)
		}
		n := actors.Notary{ServerName: t.ServerName, Keys: map[string]ed25519.PublicKey{}}
		for id, b64 := range t.VerifyKeys {
			pub, err := eventgraph.DecodeBase64(b64)
			if err != nil || len(pub) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("gateway: trusted key server %s: key %s is not an ed25519 public key", t.ServerName, id)
			}
			n.Keys[id] = pub
		}
		f.notaries = append(f.notaries, n)
	}
	f.client = fedclient.New(fedclient.Config{
		Identity:      ident,
		RootCAs:       roots,
		AllowPrivate:  fc.AllowPrivate,
		LookupHost:    fc.LookupHost,
		LookupSRV:     fc.LookupSRV,
		WellKnownPort: fc.WellKnownPort,
		Now:           cfg.Now,
		Log:           cfg.Log,
	})
	return f, nil
}

// withServerKind returns kinds plus the server actors (identity
// server/<name>) bound to f.
func withServerKind(kinds map[string]cluster.Producer, f *federation) map[string]cluster.Producer {
	out := maps.Clone(kinds)
	out[pb.KindServer] = actors.NewServerKind(actors.ServerActorConfig{Fetcher: f, Notaries: f.notaries})
	return out
}

// ServerKeys implements actors.KeyFetcher.
func (f *federation) ServerKeys(ctx context.Context, name string) ([]byte, error) {
	return f.client.Do(ctx, fedclient.Request{Method: http.MethodGet, Destination: name,
		URI: "/_matrix/key/v2/server", Limit: actors.MaxKeyResponseBytes})
}

// NotaryKeys implements actors.KeyFetcher.
func (f *federation) NotaryKeys(ctx context.Context, notary, name string) ([]byte, error) {
	return f.client.Do(ctx, fedclient.Request{Method: http.MethodGet, Destination: notary,
		URI: "/_matrix/key/v2/query/" + url.PathEscape(name), Limit: 1 << 20})
}

// registerFederation adds the federation API and the notary endpoints.
func (s *Server) registerFederation() {
	s.fed = s.cfg.Federation.built
	if s.fed == nil {
		f, err := newFederation(s.cfg, s.server)
		if err != nil {
			// Fail closed: no roots, so no peer's certificate verifies.
			s.log.Error("gateway: federation client", "err", err)
			s.cfg.Federation.RootCAs, s.cfg.Federation.CAFile, s.cfg.Federation.TrustedKeyServers = x509.NewCertPool(), "", nil
			f, _ = newFederation(s.cfg, s.server)
		}
		s.fed = f
	}
	// Idle connections to peers go when the node stops.
	context.AfterFunc(s.stopCtx, s.fed.client.Close)
	s.handle("GET /_matrix/key/v2/query/{serverName}", s.handleKeyQueryGet)
	s.handle("POST /_matrix/key/v2/query", s.handleKeyQueryPost)
	s.handle("GET /_matrix/federation/v1/version", s.handleFederationVersion)
	s.handle("GET /_matrix/federation/v1/query/profile", s.fedAuthed(s.handleFederationProfile))
	s.handle("GET /_matrix/federation/v1/query/directory", s.fedAuthed(s.handleFederationDirectory))
	s.registerFederationMembership()
	s.registerFederationMediaDirectory()
	s.registerFederationE2EE()
	s.registerFederationSend()
	s.registerFederationEvents()
	s.registerFederationQueue()
}
