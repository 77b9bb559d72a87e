package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/shoal-chat/shoal/cluster"
	"github.com/shoal-chat/shoal/gateway"
)

// Config is shoal's one configuration file. Every field can also be set by
// a flag (--server-name) and an environment variable (SHOAL_SERVER_NAME);
// precedence is flag > environment > file > default.
type Config struct {
	ServerName               string                         `yaml:"server_name"`
	DataDir                  string                         `yaml:"data_dir"`
	ClientListen             string                         `yaml:"client_listen"`
	TLSListen                []string                       `yaml:"tls_listen"`
	FederationListen         []string                       `yaml:"federation_listen"`
	AdminListen              string                         `yaml:"admin_listen"`
	TLSCert                  string                         `yaml:"tls_cert"`
	TLSKey                   string                         `yaml:"tls_key"`
	ACMEDomains              []string                       `yaml:"acme_domains"`
	ACMEEmail                string                         `yaml:"acme_email"`
	ACMECA                   string                         `yaml:"acme_ca"`
	ACMECARoot               string                         `yaml:"acme_ca_root"`
	Registration             string                         `yaml:"registration"`
	RegistrationSharedSecret string                         `yaml:"registration_shared_secret"`
	RegistrationTokens       []string                       `yaml:"registration_tokens"`
	RestrictProfileLookups   bool                           `yaml:"restrict_profile_lookups"`
	NoRateLimit              bool                           `yaml:"no_rate_limit"`
	RateLimitPerSecond       float64                        `yaml:"rate_limit_per_second"`
	RateLimitBurst           int                            `yaml:"rate_limit_burst"`
	MaxConcurrentRequests    int                            `yaml:"max_concurrent_requests"`
	ReadHeaderTimeout        time.Duration                  `yaml:"read_header_timeout"`
	IdleTimeout              time.Duration                  `yaml:"idle_timeout"`
	MaxHeaderBytes           int                            `yaml:"max_header_bytes"`
	MaxBodyBytes             int64                          `yaml:"max_body_bytes"`
	Partitions               uint32                         `yaml:"partitions"`
	ClusterName              string                         `yaml:"cluster_name"`
	ClusterListen            string                         `yaml:"cluster_listen"`
	ClusterRPCListen         string                         `yaml:"cluster_rpc_listen"`
	ClusterAdvertise         string                         `yaml:"cluster_advertise"`
	ClusterSecret            string                         `yaml:"cluster_secret"`
	Join                     []string                       `yaml:"join"`
	PublicBaseURL            string                         `yaml:"public_base_url"`
	WellKnownServer          string                         `yaml:"well_known_server"`
	LogLevel                 string                         `yaml:"log_level"`
	LogFormat                string                         `yaml:"log_format"`
	Terms                    map[string]gateway.TermsPolicy `yaml:"terms"`
	// The content repository (config_media.go).
	// Federation (config_federation.go).
	FederationCAFile       string                     `yaml:"federation_ca_file"`
	FederationAllowPrivate bool                       `yaml:"federation_allow_private"`
	TrustedKeyServers      []gateway.TrustedKeyServer `yaml:"trusted_key_servers"`
	// PushAllowPrivate lets push notifications go to private addresses.
	PushAllowPrivate bool `yaml:"push_allow_private"`

	MediaMaxUploadBytes       int64     `yaml:"media_max_upload_bytes"`
	MediaQuotaBytes           int64     `yaml:"media_quota_bytes"`
	MediaUnauthenticatedUntil time.Time `yaml:"media_unauthenticated_until"`
	URLPreviewAllowNetworks   []string  `yaml:"url_preview_allow_networks"`
}

// defaultConfig is the zero-configuration node: one node, server name
// localhost, plain HTTP on loopback, HTTPS and HTTP/3 on loopback port 8448
// with a self-signed certificate, metrics on loopback port 9008, data under
// ./shoal-data, registration open (reachable only from this machine).
func defaultConfig() Config {
	return Config{
		ServerName:            "localhost",
		DataDir:               "./shoal-data",
		ClientListen:          "127.0.0.1:8008",
		TLSListen:             []string{"127.0.0.1:8448"},
		AdminListen:           "127.0.0.1:9008",
		Registration:          "open",
		RateLimitPerSecond:    gateway.DefaultRateLimitPerSecond,
		RateLimitBurst:        gateway.DefaultRateLimitBurst,
		MaxConcurrentRequests: gateway.DefaultMaxConcurrent,
		ReadHeaderTimeout:     gateway.DefaultReadHeaderTimeout,
		IdleTimeout:           gateway.DefaultIdleTimeout,
		MaxHeaderBytes:        gateway.DefaultMaxHeaderBytes,
		MaxBodyBytes:          gateway.DefaultMaxBodyBytes,
		Partitions:            16,
		ClusterName:           "shoal",
		LogLevel:              "info",
		LogFormat:             "text",
	}
}

// setting binds one field to its flag and environment variable.
type setting struct {
	name  string // flag name; env is SHOAL_ + upper snake case
	usage string
	bool  bool
	set   func(c *Config, v string) error
}

func settings() []setting {
	str := func(f func(c *Config) *string) func(*Config, string) error {
		return func(c *Config, v string) error { *f(c) = v; return nil }
	}
	list := func(f func(c *Config) *[]string) func(*Config, string) error {
		return func(c *Config, v string) error {
			*f(c) = nil
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					*f(c) = append(*f(c), s)
				}
			}
			return nil
		}
	}
	positive := func(f func(c *Config) *int) func(*Config, string) error {
		return func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return fmt.Errorf("must be a positive integer, not %q", v)
			}
			*f(c) = n
			return nil
		}
	}
	duration := func(f func(c *Config) *time.Duration) func(*Config, string) error {
		return func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return fmt.Errorf("must be a positive duration such as 10s, not %q", v)
			}
			*f(c) = d
			return nil
		}
	}
	return append([]setting{
		{name: "server-name", usage: "the server name in user and room IDs", set: str(func(c *Config) *string { return &c.ServerName })},
		{name: "data-dir", usage: "where the node keeps its data", set: str(func(c *Config) *string { return &c.DataDir })},
		{name: "client-listen", usage: "plain-HTTP address for the client API (empty: none)", set: str(func(c *Config) *string { return &c.ClientListen })},
		{name: "tls-listen", usage: "HTTPS and HTTP/3 addresses for client and federation APIs, comma-separated (empty: none)", set: list(func(c *Config) *[]string { return &c.TLSListen })},
		{name: "federation-listen", usage: "HTTPS and HTTP/3 addresses for the federation API only, comma-separated", set: list(func(c *Config) *[]string { return &c.FederationListen })},
		{name: "admin-listen", usage: "address for Prometheus metrics and pprof; keep it private (empty: none)", set: str(func(c *Config) *string { return &c.AdminListen })},
		{name: "tls-cert", usage: "TLS certificate file (default: self-signed, kept in the data dir)", set: str(func(c *Config) *string { return &c.TLSCert })},
		{name: "tls-key", usage: "TLS key file", set: str(func(c *Config) *string { return &c.TLSKey })},
		{name: "acme-domains", usage: "domains to obtain certificates for by ACME, comma-separated (port 443 must reach a TLS listener)", set: list(func(c *Config) *[]string { return &c.ACMEDomains })},
		{name: "acme-email", usage: "contact address given to the ACME CA", set: str(func(c *Config) *string { return &c.ACMEEmail })},
		{name: "acme-ca", usage: "ACME directory URL (default: Let's Encrypt)", set: str(func(c *Config) *string { return &c.ACMECA })},
		{name: "acme-ca-root", usage: "PEM file of roots to trust for the ACME CA's own HTTPS (private or test CAs)", set: str(func(c *Config) *string { return &c.ACMECARoot })},
		{name: "registration", usage: "open, token or closed", set: func(c *Config, v string) error {
			if v != "open" && v != "token" && v != "closed" {
				return fmt.Errorf("registration must be open, token or closed, not %q", v)
			}
			c.Registration = v
			return nil
		}},
		{name: "registration-shared-secret", usage: "secret for /_synapse/admin/v1/register (default: generated in the data dir)", set: str(func(c *Config) *string { return &c.RegistrationSharedSecret })},
		{name: "registration-tokens", usage: "tokens accepted when registration is token, comma-separated", set: list(func(c *Config) *[]string { return &c.RegistrationTokens })},
		{name: "restrict-profile-lookups", usage: "answer profile look-ups of users who share no room with the caller and are in no public room with 403 (MSC4170)", bool: true, set: func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			c.RestrictProfileLookups = b
			return err
		}},
		{name: "no-rate-limit", usage: "switch rate limits and per-address limits off (load tools, reverse proxies)", bool: true, set: func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			c.NoRateLimit = b
			return err
		}},
		{name: "rate-limit-per-second", usage: "sustained requests per second per user or IP on rate-limited endpoints", set: func(c *Config, v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 {
				return fmt.Errorf("must be a positive number, not %q", v)
			}
			c.RateLimitPerSecond = f
			return nil
		}},
		{name: "rate-limit-burst", usage: "requests a user or IP may burst on rate-limited endpoints", set: positive(func(c *Config) *int { return &c.RateLimitBurst })},
		{name: "max-concurrent-requests", usage: "requests in flight per user, and per IP before authentication unless --no-rate-limit", set: positive(func(c *Config) *int { return &c.MaxConcurrentRequests })},
		{name: "read-header-timeout", usage: "time a client has to send its request headers (and finish a TLS handshake)", set: duration(func(c *Config) *time.Duration { return &c.ReadHeaderTimeout })},
		{name: "idle-timeout", usage: "time a keep-alive connection may stay idle", set: duration(func(c *Config) *time.Duration { return &c.IdleTimeout })},
		{name: "max-header-bytes", usage: "largest request headers accepted (431 beyond)", set: positive(func(c *Config) *int { return &c.MaxHeaderBytes })},
		{name: "max-body-bytes", usage: "largest request body accepted (413 M_TOO_LARGE beyond)", set: func(c *Config, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return fmt.Errorf("must be a positive integer, not %q", v)
			}
			c.MaxBodyBytes = n
			return nil
		}},
		{name: "partitions", usage: "partition count, fixed when the data dir is created", set: func(c *Config, v string) error {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n == 0 || n > 4096 {
				return fmt.Errorf("partitions must be between 1 and 4096")
			}
			c.Partitions = uint32(n)
			return nil
		}},
		{name: "cluster-listen", usage: "gossip address (UDP and TCP) that makes this node a cluster member (empty: a one-node server)", set: str(func(c *Config) *string { return &c.ClusterListen })},
		{name: "join", usage: "gossip addresses of existing cluster members, comma-separated (empty on the node that founds the cluster)", set: list(func(c *Config) *[]string { return &c.Join })},
		{name: "cluster-secret", usage: "secret shared by the cluster's nodes, at least 16 characters; prefer the environment variable", set: str(func(c *Config) *string { return &c.ClusterSecret })},
		{name: "cluster-name", usage: "the cluster's name; nodes of another name are refused", set: str(func(c *Config) *string { return &c.ClusterName })},
		{name: "cluster-rpc-listen", usage: "address of the actor transport between nodes (default: the cluster-listen port + 1)", set: str(func(c *Config) *string { return &c.ClusterRPCListen })},
		{name: "cluster-advertise", usage: "host other nodes reach this one at (default: the cluster-listen host)", set: str(func(c *Config) *string { return &c.ClusterAdvertise })},
		{name: "public-base-url", usage: "client base URL advertised in /.well-known/matrix/client", set: str(func(c *Config) *string { return &c.PublicBaseURL })},
		{name: "well-known-server", usage: "delegated federation host:port for /.well-known/matrix/server", set: str(func(c *Config) *string { return &c.WellKnownServer })},
		{name: "log-level", usage: "debug, info, warn or error", set: str(func(c *Config) *string { return &c.LogLevel })},
		{name: "log-format", usage: "text or json", set: str(func(c *Config) *string { return &c.LogFormat })},
	}, append(mediaSettings(), federationSettings()...)...)
}

func envName(flagName string) string {
	return "SHOAL_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// loadConfig builds the configuration for `shoal serve args...`.
func loadConfig(args []string, getenv func(string) string) (Config, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	configPath := fs.String("config", getenv("SHOAL_CONFIG"), "YAML configuration file (env SHOAL_CONFIG)")
	values := map[string]*string{}
	for _, s := range settings() {
		v := new(string)
		values[s.name] = v
		if s.bool {
			fs.Var(boolFlag{v}, s.name, s.usage+" (env "+envName(s.name)+")")
		} else {
			fs.StringVar(v, s.name, "", s.usage+" (env "+envName(s.name)+")")
		}
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	cfg := defaultConfig()
	if *configPath != "" {
		data, err := os.ReadFile(*configPath)
		if err != nil {
			return Config{}, fmt.Errorf("read config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			return Config{}, fmt.Errorf("config %s: %w", *configPath, err)
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, s := range settings() {
		v, fromFlag := *values[s.name], set[s.name]
		if !fromFlag {
			env, ok := lookupEnv(getenv, envName(s.name))
			if !ok {
				continue
			}
			v = env
		}
		if err := s.set(&cfg, v); err != nil {
			return Config{}, fmt.Errorf("--%s: %w", s.name, err)
		}
	}
	return cfg, cfg.validate()
}

func lookupEnv(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

func (c Config) validate() error {
	if c.ServerName == "" {
		return errors.New("server_name must be set")
	}
	if c.DataDir == "" {
		return errors.New("data_dir must be set")
	}
	if err := c.validateMedia(); err != nil {
		return err
	}
	if c.ClientListen == "" && len(c.TLSListen) == 0 && len(c.FederationListen) == 0 {
		return errors.New("nothing to listen on: set client_listen, tls_listen or federation_listen")
	}
	if len(c.ACMEDomains) > 0 && len(c.TLSListen)+len(c.FederationListen) == 0 {
		return errors.New("acme_domains needs a TLS listener (tls_listen or federation_listen) to answer the CA's challenges")
	}
	if c.RateLimitPerSecond <= 0 || c.RateLimitBurst <= 0 || c.MaxConcurrentRequests <= 0 || c.ReadHeaderTimeout <= 0 ||
		c.IdleTimeout <= 0 || c.MaxHeaderBytes <= 0 || c.MaxBodyBytes <= 0 {
		return errors.New("rate limits, concurrency, timeouts and size limits must be positive")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("tls_cert and tls_key go together")
	}
	switch c.Registration {
	case "open", "token", "closed":
	default:
		return fmt.Errorf("registration must be open, token or closed, not %q", c.Registration)
	}
	if c.Partitions == 0 {
		return errors.New("partitions must be positive")
	}
	if c.ClusterListen == "" {
		if len(c.Join) > 0 || c.ClusterRPCListen != "" || c.ClusterAdvertise != "" {
			return errors.New("join, cluster_rpc_listen and cluster_advertise need cluster_listen")
		}
	} else {
		if len(c.ClusterSecret) < cluster.MinSecretLength {
			return fmt.Errorf("cluster_listen needs cluster_secret (or SHOAL_CLUSTER_SECRET) of at least %d characters, the same on every node", cluster.MinSecretLength)
		}
		if c.ClusterName == "" {
			return errors.New("cluster_name must not be empty")
		}
	}
	return nil
}

type boolFlag struct{ v *string }

func (b boolFlag) String() string {
	if b.v == nil {
		return "false"
	}
	return *b.v
}
func (b boolFlag) Set(s string) error {
	if _, err := strconv.ParseBool(s); err != nil {
		return err
	}
	*b.v = s
	return nil
}
func (b boolFlag) IsBoolFlag() bool { return true }
