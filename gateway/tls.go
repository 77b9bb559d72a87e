package gateway

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// TLSConfig loads the operator's certificate and key, or — when none are
// given — a self-signed certificate for serverName kept in dir, created on
// first use, so a hobbyist's node serves HTTPS with no configuration.
func TLSConfig(certFile, keyFile, dir, serverName string) (*tls.Config, error) {
	cert, err := loadCertificate(certFile, keyFile, dir, serverName)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		// TLS 1.2 stays enabled: some mobile clients still fail on 1.3-only.
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
	}, nil
}

// SelfSignedCertFile is where the self-signed certificate lives in the data
// dir (clients that are to trust it read it there).
func SelfSignedCertFile(dir string) string { return filepath.Join(dir, "tls.crt") }

func loadCertificate(certFile, keyFile, dir, serverName string) (tls.Certificate, error) {
	if certFile == "" && keyFile == "" {
		certFile, keyFile = SelfSignedCertFile(dir), filepath.Join(dir, "tls.key")
		if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
			if err := writeSelfSigned(certFile, keyFile, serverName); err != nil {
				return tls.Certificate{}, err
			}
		}
	} else if certFile == "" || keyFile == "" {
		return tls.Certificate{}, errors.New("gateway: --tls-cert and --tls-key go together")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("gateway: load TLS certificate: %w", err)
	}
	return cert, nil
}

func writeSelfSigned(certFile, keyFile, serverName string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("gateway: generate TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return fmt.Errorf("gateway: certificate serial: %w", err)
	}
	host, _, err := net.SplitHostPort(serverName)
	if err != nil {
		host = serverName
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host, Organization: []string{"shoal self-signed"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(5 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	} else if host != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("gateway: self-sign certificate: %w", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("gateway: encode TLS key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return fmt.Errorf("gateway: write TLS key: %w", err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("gateway: write TLS certificate: %w", err)
	}
	return nil
}
