package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"

	"github.com/shoal-chat/shoal/actors"
)

// ACMEConfig turns on certificates obtained and renewed by ACME.
type ACMEConfig struct {
	// Domains get certificates; none means no ACME.
	Domains []string
	// Email is given to the CA for expiry notices (optional).
	Email string
	// CA is the directory URL; empty means Let's Encrypt's production CA.
	CA string
	// CARoots, when set, are the roots trusted for the CA's own HTTPS
	// (private or test CAs).
	CARoots *x509.CertPool
	// RenewCheckInterval is how often certificates are checked for
	// renewal; zero means certmagic's default (10 minutes).
	RenewCheckInterval time.Duration
	// RenewalWindowRatio is the part of a certificate's lifetime left when
	// it is renewed if the CA suggests no renewal window; zero means 1/3.
	RenewalWindowRatio float64
	// LockLease is the lease of the cluster-wide certificate locks; zero
	// means a minute.
	LockLease time.Duration
}

// certStoreName names the certs actor that holds the cluster's ACME data.
const certStoreName = "acme"

// certManager obtains and renews the certificates of ACMEConfig.Domains
// with certmagic, keeping them in the cluster's certs actor, and staples
// OCSP responses to them. TLS-ALPN-01 is the challenge: the CA connects to
// port 443 of a domain and is answered by shoal's own TLS listeners (by
// whichever node it reaches: challenge data lives in the shared store too),
// so certmagic never opens a listener of its own.
type certManager struct {
	magic    *certmagic.Config
	cache    *certmagic.Cache
	store    *certStore
	fallback *tls.Certificate
	cancel   context.CancelFunc
}

// newCertManager prepares certificate management; start begins it once the
// TLS listeners accept connections. challengeAddr is the bound address of
// the TLS listener that port 443 reaches; fallback is served to clients
// that name no managed domain (by IP address, or as localhost).
func newCertManager(cfg ACMEConfig, router actors.Router, challengeAddr string, fallback *tls.Certificate, log *slog.Logger) (*certManager, error) {
	if len(cfg.Domains) == 0 {
		return nil, errors.New("gateway: ACME needs at least one domain")
	}
	host, portStr, err := net.SplitHostPort(challengeAddr)
	if err != nil {
		return nil, fmt.Errorf("gateway: ACME challenge address %q: %w", challengeAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("gateway: ACME challenge port %q: %w", portStr, err)
	}
	zl := zapToSlog(log.With(slog.String("component", "certmagic")))
	m := &certManager{store: newCertStore(router, certStoreName, cfg.LockLease, log), fallback: fallback}
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return m.magic, nil },
		RenewCheckInterval: cfg.RenewCheckInterval,
		Logger:             zl,
	})
	m.magic = certmagic.New(m.cache, certmagic.Config{
		RenewalWindowRatio: cfg.RenewalWindowRatio,
		Storage:            m.store,
		Logger:             zl,
	})
	ca := cfg.CA
	if ca == "" {
		ca = certmagic.LetsEncryptProductionCA
	}
	m.magic.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(m.magic, certmagic.ACMEIssuer{
		CA:           ca,
		Email:        cfg.Email,
		Agreed:       true,
		TrustedRoots: cfg.CARoots,
		// No listener on port 80: HTTP-01 could not be answered.
		DisableHTTPChallenge: true,
		// Port 443 reaches this listener (directly, or forwarded); since
		// it is bound already certmagic answers through our TLS config.
		ListenHost:     host,
		AltTLSALPNPort: port,
		Logger:         zl,
	})}
	return m, nil
}

// start begins obtaining (or loading from the store) the certificates and
// their renewal in the background.
func (m *certManager) start(domains []string) error {
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	if err := m.magic.ManageAsync(ctx, domains); err != nil {
		cancel()
		return fmt.Errorf("gateway: manage certificates: %w", err)
	}
	return nil
}

// tlsConfig serves managed certificates, answers TLS-ALPN-01 challenges,
// and falls back to the self-signed or operator certificate for names it
// does not manage (and while the first certificate is on its way).
func (m *certManager) tlsConfig() *tls.Config {
	tc := m.magic.TLSConfig()
	get := tc.GetCertificate
	tc.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		cert, err := get(hello)
		if err == nil || m.fallback == nil || slices.Contains(hello.SupportedProtos, acmez.ACMETLS1Protocol) {
			return cert, err
		}
		return m.fallback, nil
	}
	tc.NextProtos = append([]string{"h2", "http/1.1"}, tc.NextProtos...)
	tc.MinVersion = tls.VersionTLS12
	return tc
}

// stop ends renewals and lets go of held locks, waiting (bounded by ctx)
// for certmagic's maintenance to notice.
func (m *certManager) stop(ctx context.Context) error {
	if m.cancel != nil {
		m.cancel()
	}
	m.store.release()
	done := make(chan struct{})
	go func() {
		m.cache.Stop()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("gateway: stop certificate maintenance: %w", ctx.Err())
	}
}
