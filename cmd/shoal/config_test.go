package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestConfigDefaults(t *testing.T) {
	cfg, err := loadConfig(nil, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "localhost" || cfg.ClientListen != "127.0.0.1:8008" || cfg.DataDir != "./shoal-data" || cfg.Registration != "open" {
		t.Fatalf("zero-config defaults wrong: %+v", cfg)
	}
	// HTTPS + HTTP/3 and metrics on loopback only: open registration must
	// not be reachable from the network without configuration.
	if len(cfg.TLSListen) != 1 || cfg.TLSListen[0] != "127.0.0.1:8448" || cfg.AdminListen != "127.0.0.1:9008" {
		t.Fatalf("zero-config listeners wrong: tls %v admin %q", cfg.TLSListen, cfg.AdminListen)
	}
	off, err := loadConfig([]string{"--tls-listen", "", "--admin-listen", ""}, func(string) string { return "" })
	if err != nil || len(off.TLSListen) != 0 || off.AdminListen != "" {
		t.Fatalf("listeners not turned off: %v %+v", err, off)
	}
}

func TestConfigListenerSettings(t *testing.T) {
	env := map[string]string{"SHOAL_RATE_LIMIT_BURST": "7", "SHOAL_ACME_DOMAINS": "a.example, b.example"}
	file := filepath.Join(t.TempDir(), "shoal.yaml")
	err := os.WriteFile(file, []byte("read_header_timeout: 3s\nmax_body_bytes: 2048\nfederation_listen: [\":8449\"]\nacme_email: ops@a.example\n"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig([]string{"--config", file, "--idle-timeout", "1m", "--rate-limit-per-second", "2.5",
		"--max-concurrent-requests", "9"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ReadHeaderTimeout.Seconds() != 3 || cfg.MaxBodyBytes != 2048 || cfg.IdleTimeout.Minutes() != 1 ||
		cfg.RateLimitPerSecond != 2.5 || cfg.RateLimitBurst != 7 || cfg.MaxConcurrentRequests != 9 ||
		len(cfg.FederationListen) != 1 || len(cfg.ACMEDomains) != 2 || cfg.ACMEDomains[1] != "b.example" ||
		cfg.ACMEEmail != "ops@a.example" {
		t.Fatalf("settings not applied: %+v", cfg)
	}
}

// flag > environment > file > default, for every kind of field.
func TestConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "shoal.yaml")
	err := os.WriteFile(file, []byte("server_name: file.example\ndata_dir: /file\nregistration: closed\ntls_listen: [\":1\", \":2\"]\npartitions: 8\n"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SHOAL_DATA_DIR": "/env", "SHOAL_REGISTRATION": "token", "SHOAL_NO_RATE_LIMIT": "true"}
	getenv := func(k string) string { return env[k] }
	cfg, err := loadConfig([]string{"--config", file, "--registration", "open", "--tls-listen", ":3"}, getenv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "file.example" {
		t.Errorf("server_name from file: got %q", cfg.ServerName)
	}
	if cfg.DataDir != "/env" {
		t.Errorf("data_dir from env over file: got %q", cfg.DataDir)
	}
	if cfg.Registration != "open" {
		t.Errorf("registration from flag over env: got %q", cfg.Registration)
	}
	if len(cfg.TLSListen) != 1 || cfg.TLSListen[0] != ":3" {
		t.Errorf("tls_listen from flag: got %v", cfg.TLSListen)
	}
	if !cfg.NoRateLimit {
		t.Error("no_rate_limit from env not applied")
	}
	if cfg.Partitions != 8 {
		t.Errorf("partitions from file: got %d", cfg.Partitions)
	}
}

func TestConfigRefusesBadInput(t *testing.T) {
	none := func(string) string { return "" }
	for _, args := range [][]string{
		{"--registration", "sometimes"},
		{"--partitions", "0"},
		{"--tls-cert", "a.pem"},
		{"--client-listen", "", "--tls-listen", "", "--admin-listen", ""},
		{"--acme-domains", "a.example", "--tls-listen", ""},
		{"--read-header-timeout", "0s"},
		{"--rate-limit-burst", "-1"},
		{"--bogus"},
	} {
		if _, err := loadConfig(args, none); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
	file := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(file, []byte("server_nmae: typo\n"), 0o600)
	if _, err := loadConfig([]string{"--config", file}, none); err == nil {
		t.Error("unknown config key accepted")
	}
}

func TestConfigFederation(t *testing.T) {
	file := filepath.Join(t.TempDir(), "fed.yaml")
	err := os.WriteFile(file, []byte("federation_ca_file: /ca.pem\ntrusted_key_servers:\n  - server_name: notary.example\n    verify_keys: {\"ed25519:a\": \"AAAA\"}\n"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SHOAL_FEDERATION_ALLOW_PRIVATE": "true"}
	cfg, err := loadConfig([]string{"--config", file}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	fc := cfg.federation()
	if fc.CAFile != "/ca.pem" || !fc.AllowPrivate || len(fc.TrustedKeyServers) != 1 ||
		fc.TrustedKeyServers[0].VerifyKeys["ed25519:a"] != "AAAA" {
		t.Fatalf("federation config: %+v", fc)
	}
}
