package main

import (
	"strconv"

	"github.com/shoal-chat/shoal/gateway"
)

// federationSettings are the settings of shoal's outbound connections:
// federation (whose notaries, trusted_key_servers, are a list and live in
// the file only) and push gateways.
func federationSettings() []setting {
	return []setting{
		{name: "federation-ca-file", usage: "PEM file of the CAs trusted for other servers (default: the system's; SSL_CERT_FILE works too)", set: func(c *Config, v string) error {
			c.FederationCAFile = v
			return nil
		}},
		{name: "federation-allow-private", usage: "let federation reach private, loopback and link-local addresses (tests, private deployments)", bool: true, set: func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			c.FederationAllowPrivate = b
			return err
		}},
		{name: "push-allow-private", usage: "let push notifications reach gateways on private, loopback and link-local addresses", bool: true, set: func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			c.PushAllowPrivate = b
			return err
		}},
	}
}

func (c Config) federation() gateway.FederationConfig {
	return gateway.FederationConfig{
		CAFile:            c.FederationCAFile,
		AllowPrivate:      c.FederationAllowPrivate,
		TrustedKeyServers: c.TrustedKeyServers,
	}
}
