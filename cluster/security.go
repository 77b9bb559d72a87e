package cluster

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"time"
)

// How the nodes of a cluster authenticate each other and encrypt what they
// exchange. Everything derives from the cluster secret, which every node is
// given by its operator and which never travels:
//
//   - Gossip (memberlist, UDP and TCP) is sealed with AES-256-GCM under a key
//     derived from the secret (memberlist's keyring): a packet from a node
//     without the secret cannot be read and is dropped.
//   - The actor transport (gRPC) runs TLS 1.3 with certificates on both
//     sides. The cluster CA's ed25519 key is derived from the secret, so
//     every node derives the same CA without anything being handed around;
//     at start each node makes itself a fresh key pair and a certificate
//     signed by that CA, and accepts a peer only if the peer's certificate
//     chains to it. Knowing the secret is what makes a node a member, exactly
//     as for gossip; a stolen node certificate is no worse than a stolen
//     secret, and rotating the secret (restarting every node with a new one)
//     revokes every certificate.
//
// A CA made by the first node and handed to joiners would need an
// authenticated channel to hand it over — which is the secret again — and a
// place to keep its private key; deriving it needs neither.
const (
	kdfSalt         = "shoal cluster v1"
	kdfGossipInfo   = "memberlist gossip key"
	kdfCAInfo       = "actor transport CA ed25519 seed"
	transportServer = "shoal-cluster" // the name in every node certificate

	// MinSecretLength is the shortest cluster secret accepted.
	MinSecretLength = 16
)

// deriveKey derives n bytes for purpose info from the cluster secret.
func deriveKey(secret, info string, n int) ([]byte, error) {
	if len(secret) < MinSecretLength {
		return nil, fmt.Errorf("cluster: the cluster secret must be at least %d characters", MinSecretLength)
	}
	k, err := hkdf.Key(sha256.New, []byte(secret), []byte(kdfSalt), info, n)
	if err != nil {
		return nil, fmt.Errorf("cluster: derive %s: %w", info, err)
	}
	return k, nil
}

// gossipKey is memberlist's AES-256 key for the cluster secret.
func gossipKey(secret string) ([]byte, error) { return deriveKey(secret, kdfGossipInfo, 32) }

// transportTLS holds the TLS configurations of the actor transport.
type transportTLS struct {
	server, client *tls.Config
}

// newTransportTLS derives the cluster CA from secret and issues this node a
// certificate for the actor transport.
func newTransportTLS(secret, nodeID string) (*transportTLS, error) {
	seed, err := deriveKey(secret, kdfCAInfo, ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	caKey := ed25519.NewKeyFromSeed(seed)
	// The CA certificate is a pure function of the secret: same key, same
	// fields, and ed25519 signatures are deterministic.
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "shoal cluster CA"},
		NotBefore:             time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2124, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(nil, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("cluster: make CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("cluster: parse CA certificate: %w", err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cluster: node key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("cluster: certificate serial: %w", err)
	}
	now := time.Now()
	leafTmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: nodeID},
		DNSNames:     []string{transportServer},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(nil, leafTmpl, ca, pub, caKey)
	if err != nil {
		return nil, fmt.Errorf("cluster: make node certificate: %w", err)
	}
	cert := tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: priv}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &transportTLS{
		server: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientCAs:    pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS13,
		},
		client: &tls.Config{
			Certificates: []tls.Certificate{cert},
			RootCAs:      pool,
			ServerName:   transportServer,
			MinVersion:   tls.VersionTLS13,
		},
	}, nil
}
