// Command shoal is a Matrix homeserver that scales out by adding nodes.
//
//	shoal serve [flags]          run a node (see shoal serve -h)
//	shoal user create [flags]    create an account on a running node
//	shoal cluster status [flags] show a running node's cluster
//	shoal cluster leave [flags]  make a running node leave its cluster
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/shoal-chat/shoal/gateway"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

func run(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:], stderr, getenv)
	case "cluster":
		err = clusterCommand(args[1:], stdout, getenv)
	case "user":
		if len(args) < 2 || args[1] != "create" {
			fmt.Fprintln(stderr, "usage: shoal user create [flags]")
			return 2
		}
		err = userCreate(args[2:], stdout, getenv)
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	default:
		usage(stderr)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "shoal:", err)
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprint(w, `shoal — a Matrix homeserver that scales out by adding nodes

  shoal serve [flags]          run a node; with no flags: localhost, http://127.0.0.1:8008,
                               https://127.0.0.1:8448 (and HTTP/3), metrics on 127.0.0.1:9008, ./shoal-data
  shoal user create [flags]    create an account on a running node (shared-secret registration)
  shoal cluster status [flags] members, partition map, epochs and handoffs of a running node's cluster
  shoal cluster leave [flags]  hand a running node's partitions to the others; it stops once it has left

Run "shoal serve -h", "shoal user create -h" or "shoal cluster status -h" for their flags.
`)
}

func newLogger(cfg Config, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, fmt.Errorf("log_level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(cfg.LogFormat) {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log_format must be text or json, not %q", cfg.LogFormat)
	}
}

// serve runs a node until SIGTERM or SIGINT, then stops it within
// gateway.StopTimeout. SIGSTOP/SIGCONT need nothing: timeouts are relative
// and nothing assumes wall-clock continuity.
func serve(args []string, logOut io.Writer, getenv func(string) string) error {
	cfg, err := loadConfig(args, getenv)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg, logOut)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	ncfg, err := nodeConfig(cfg, log)
	if err != nil {
		return err
	}
	node, err := gateway.StartNode(ncfg)
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("%w\n  another program listens on that address: choose another one with its flag "+
			"(--client-listen, --tls-listen, --federation-listen, --admin-listen), or pass \"\" to turn that listener off", err)
	}
	if err != nil {
		return err
	}
	log.Info("shoal is running", slog.String("server_name", cfg.ServerName), slog.String("client", node.ClientAddr),
		slog.Any("tls", node.TLSAddrs), slog.Any("federation", node.FederationAddrs), slog.String("admin", node.AdminAddr),
		slog.String("data_dir", cfg.DataDir))

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	var runErr error
	select {
	case sig := <-sigs:
		log.Info("shutting down", slog.String("signal", sig.String()))
	case runErr = <-node.Errors():
		log.Error("listener failed", slog.Any("err", runErr))
	case <-node.Left():
		log.Info("left the cluster; stopping")
	}
	ctx, cancel := context.WithTimeout(context.Background(), gateway.StopTimeout)
	defer cancel()
	if err := node.Stop(ctx); err != nil {
		log.Warn("shutdown", slog.Any("err", err))
	}
	log.Info("stopped")
	return runErr
}

func nodeConfig(cfg Config, log *slog.Logger) (gateway.NodeConfig, error) {
	var roots *x509.CertPool
	if cfg.ACMECARoot != "" {
		pem, err := os.ReadFile(cfg.ACMECARoot)
		if err != nil {
			return gateway.NodeConfig{}, fmt.Errorf("acme_ca_root: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return gateway.NodeConfig{}, fmt.Errorf("acme_ca_root: no PEM certificate in %s", cfg.ACMECARoot)
		}
	}
	return gateway.NodeConfig{
		Gateway: gateway.Config{
			ServerName:               cfg.ServerName,
			Registration:             cfg.Registration,
			RegistrationTokens:       cfg.RegistrationTokens,
			RegistrationSharedSecret: cfg.RegistrationSharedSecret,
			RestrictProfileLookups:   cfg.RestrictProfileLookups,
			Terms:                    cfg.Terms,
			PublicBaseURL:            cfg.PublicBaseURL,
			WellKnownServer:          cfg.WellKnownServer,
			RateLimit:                !cfg.NoRateLimit,
			RateLimitPerSecond:       cfg.RateLimitPerSecond,
			RateLimitBurst:           cfg.RateLimitBurst,
			MaxConcurrent:            cfg.MaxConcurrentRequests,
			ReadHeaderTimeout:        cfg.ReadHeaderTimeout,
			IdleTimeout:              cfg.IdleTimeout,
			MaxHeaderBytes:           cfg.MaxHeaderBytes,
			MaxBodyBytes:             cfg.MaxBodyBytes,
			Media:                    cfg.media(),
			Federation:               cfg.federation(),
			PushAllowPrivate:         cfg.PushAllowPrivate,
		},
		DataDir:          cfg.DataDir,
		Partitions:       cfg.Partitions,
		ClientListen:     cfg.ClientListen,
		TLSListen:        cfg.TLSListen,
		FederationListen: cfg.FederationListen,
		AdminListen:      cfg.AdminListen,
		TLSCert:          cfg.TLSCert,
		TLSKey:           cfg.TLSKey,
		ACME: gateway.ACMEConfig{
			Domains: cfg.ACMEDomains,
			Email:   cfg.ACMEEmail,
			CA:      cfg.ACMECA,
			CARoots: roots,
		},
		Cluster: clusterConfig(cfg),
		Log:     log,
	}, nil
}
