package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// target is one server under test, ready for requests.
type target struct {
	name        string
	description string
	hs          *homeserver
	reference   bool // run for comparison only: its failures do not fail the run
	// close stops the server if the tool started it and removes its data
	// dir unless it is to be kept.
	close func() error
}

// benchServerName is the server name of the nodes the tool starts.
const benchServerName = "bench.local"

// startShoal starts a fresh shoal node from bin on a free loopback port
// with a new data dir.
func startShoal(ctx context.Context, bin string, keep bool, hc *http.Client) (*target, error) {
	abs, err := filepath.Abs(bin)
	if err != nil {
		return nil, fmt.Errorf("shoal binary: %w", err)
	}
	if _, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("shoal binary: %w", err)
	}
	dir, err := os.MkdirTemp("", "shoalbench-shoal-")
	if err != nil {
		return nil, fmt.Errorf("shoal data dir: %w", err)
	}
	cleanup := func() error {
		if keep {
			return nil
		}
		return os.RemoveAll(dir)
	}
	addr, err := freeLoopbackAddr()
	if err != nil {
		return nil, errors.Join(err, cleanup())
	}
	dataDir := filepath.Join(dir, "data")
	p, err := startProcess("shoal", dir, []string{abs, "serve", "--server-name", benchServerName,
		"--data-dir", dataDir, "--client-listen", addr, "--tls-listen", "", "--admin-listen", "",
		"--no-rate-limit", "--log-level", "warn"})
	if err != nil {
		return nil, errors.Join(err, cleanup())
	}
	hs := &homeserver{base: "http://" + addr, serverName: benchServerName, hc: hc}
	t := &target{
		name:        "shoal",
		description: fmt.Sprintf("%s, fresh node at %s, data in %s", abs, hs.base, dataDir),
		hs:          hs,
		close:       func() error { return errors.Join(p.stop(), cleanup()) },
	}
	if err := p.waitReady(ctx, hs); err != nil {
		return nil, errors.Join(err, t.close())
	}
	return t, nil
}

// remoteTarget is a server that is already running at base.
func remoteTarget(base, serverName, sharedSecret string, hc *http.Client) (*target, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("-url %q: want http(s)://host:port", base)
	}
	if !isLoopback(u.Hostname()) {
		return nil, fmt.Errorf("-url %q: shoalbench only loads servers on this machine (loopback)", base)
	}
	if serverName == "" {
		serverName = u.Hostname()
	}
	hs := &homeserver{base: strings.TrimRight(base, "/"), serverName: serverName, sharedSecret: sharedSecret, hc: hc}
	how := "m.login.dummy registration"
	if sharedSecret != "" {
		how = "shared-secret registration"
	}
	return &target{
		name:        "url",
		description: fmt.Sprintf("running server at %s (%s), %s", hs.base, serverName, how),
		hs:          hs,
		close:       func() error { return nil },
	}, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
