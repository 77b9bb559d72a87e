// Package interop tests shoal's federation against homeservers shoal did
// not write. Dendrite (AGPL) is only ever run as a separate program, set up
// at run time by its own generate-config and generate-keys; the tests skip
// when it is not installed unless SHOAL_REQUIRE_DENDRITE=1.
//
// Name resolution: Dendrite resolves server names with the system's
// resolver, which knows none of the made-up names of shoaltest.Federation.
// The servers are therefore named so that discovery needs no DNS records
// (server-server API "Resolving server names"): shoal by an IP literal with
// a port ("127.0.0.1:<port>", step 1), Dendrite by "localhost:<port>" (an
// explicit port, step 2: localhost resolves from the hosts file). Each
// dials the other's federation port directly and checks its certificate —
// issued by the test's CA for 127.0.0.1 and localhost — against that CA.
// The two names differ in their host part, which server ACLs match on.
// Shoal is given the CA as its federation roots and allowed private
// addresses; Dendrite (which has no notion of refusing private addresses)
// gets the CA through SSL_CERT_FILE, which Go's crypto/x509 honours on Unix.
//
// Environment: SHOAL_DENDRITE names the dendrite binary (else GOPATH/bin,
// else PATH; generate-config and generate-keys are looked for beside it);
// SHOAL_REQUIRE_DENDRITE=1 fails instead of skipping without it;
// SHOAL_KEEP_INTEROP=1 keeps Dendrite's directory (config, databases, its
// log and shoal's debug log), which is always kept when a test fails;
// SHOAL_DENDRITE_LOG=debug (or trace) makes Dendrite log every federation
// transaction.
//
//	go test -race -count=1 -run TestDendrite ./gateway/interop/
package interop

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"go/build"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

const (
	// dendriteStartTimeout covers Dendrite's first start, which creates and
	// migrates its SQLite databases.
	dendriteStartTimeout = 45 * time.Second
	dendriteStopTimeout  = 10 * time.Second
	// dendriteWant is the version these tests were written against; another
	// one is run all the same, with a note in the log.
	dendriteWant = "0.13.8"
)

// dendrite is a running Dendrite homeserver.
type dendrite struct {
	// ServerName is "localhost:<port of its HTTPS listener>".
	ServerName string
	// ClientURL is its plain-HTTP listener (client API).
	ClientURL string
	// FederationURL is its HTTPS listener.
	FederationURL string
	Version       string

	t       testing.TB
	dir     string // everything of this Dendrite's, kept when the test fails
	runDir  string // the config and databases of the attempt that started
	secret  string
	argv    []string
	env     []string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	stopped bool // by halt, not on its own
	waitErr error
	hc      *http.Client
	ca      *shoaltest.CA
}

// findDendrite returns the dendrite binary: $SHOAL_DENDRITE, else beside
// the Go tools of GOPATH (where go install puts it), else on PATH. It skips
// the test when there is none, unless SHOAL_REQUIRE_DENDRITE=1.
func findDendrite(t testing.TB) string {
	t.Helper()
	candidates := []string{os.Getenv("SHOAL_DENDRITE")}
	for _, gp := range filepath.SplitList(build.Default.GOPATH) {
		candidates = append(candidates, filepath.Join(gp, "bin", "dendrite"))
	}
	if p, err := exec.LookPath("dendrite"); err == nil {
		candidates = append(candidates, p)
	}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() {
			abs, err := filepath.Abs(c)
			if err != nil {
				t.Fatal(err)
			}
			return abs
		}
	}
	const why = "dendrite is not installed (go install github.com/matrix-org/dendrite/cmd/{dendrite,generate-config,generate-keys}@v0.13.8, or set SHOAL_DENDRITE)"
	if os.Getenv("SHOAL_REQUIRE_DENDRITE") == "1" {
		t.Fatal(why + " and SHOAL_REQUIRE_DENDRITE=1")
	}
	t.Skip(why)
	return ""
}

// dendriteTool finds generate-config or generate-keys beside the binary.
func dendriteTool(t testing.TB, bin, name string) string {
	t.Helper()
	beside := filepath.Join(filepath.Dir(bin), name)
	if fi, err := os.Stat(beside); err == nil && !fi.IsDir() {
		return beside
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("%s (a Dendrite tool) is neither beside %s nor on PATH", name, bin)
	return ""
}

// freePort finds a free TCP port on 127.0.0.1. The server that is to
// listen on it is started right after; the ports must be known before,
// since they are part of the server names.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

func runTool(t testing.TB, dir string, argv ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes()
}

// setPath sets m[a][b]...[z] = v, creating missing maps on the way.
func setPath(m map[string]any, path []string, v any) error {
	for _, k := range path[:len(path)-1] {
		next, ok := m[k]
		if !ok || next == nil {
			child := map[string]any{}
			m[k] = child
			m = child
			continue
		}
		child, ok := next.(map[string]any)
		if !ok {
			return fmt.Errorf("%q is a %T, not a map", k, next)
		}
		m = child
	}
	m[path[len(path)-1]] = v
	return nil
}

// dendriteConfig patches the config Dendrite's generate-config made:
// federation on, with TLS checked against the system roots (the test CA,
// through SSL_CERT_FILE) and no perspective key servers (keys are fetched
// from each server itself; nothing may leave this machine); no third-party
// ID servers, no stats, no server notices; presence on both ways;
// registration by shared secret only; rate limits off; the cheapest
// bcrypt; logs on stderr at info ($SHOAL_DENDRITE_LOG sets another level).
func dendriteConfig(t testing.TB, generated []byte, dir, serverName, keyPath, secret string) []byte {
	t.Helper()
	logLevel := "info"
	if l := os.Getenv("SHOAL_DENDRITE_LOG"); l != "" {
		logLevel = l // "debug" or "trace" to see every federation request
	}
	var doc map[string]any
	if err := yaml.Unmarshal(generated, &doc); err != nil {
		t.Fatalf("parse generated Dendrite config: %v", err)
	}
	for _, section := range []string{"global", "client_api", "federation_api", "user_api"} {
		if _, ok := doc[section].(map[string]any); !ok {
			t.Fatalf("generated Dendrite config has no %q section: not the v0.13 format", section)
		}
	}
	sets := []struct {
		path  string
		value any
	}{
		{"global.server_name", serverName},
		{"global.private_key", keyPath},
		{"global.disable_federation", false},
		{"global.trusted_third_party_id_servers", []any{}},
		{"global.report_stats.enabled", false},
		{"global.server_notices.enabled", false},
		{"global.presence.enable_inbound", true},
		{"global.presence.enable_outbound", true},
		{"global.jetstream.storage_path", filepath.Join(dir, "jetstream")},
		{"client_api.registration_disabled", true},
		{"client_api.registration_requires_token", false},
		{"client_api.enable_registration_captcha", false},
		{"client_api.registration_shared_secret", secret},
		{"client_api.rate_limiting.enabled", false},
		{"federation_api.key_perspectives", []any{}},
		{"federation_api.disable_tls_validation", false},
		{"federation_api.prefer_direct_fetch", true},
		{"user_api.bcrypt_cost", 4},
		{"logging", []any{map[string]any{"type": "std", "level": logLevel}}},
	}
	for _, s := range sets {
		if err := setPath(doc, strings.Split(s.path, "."), s.value); err != nil {
			t.Fatalf("patch Dendrite config %s: %v", s.path, err)
		}
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// startDendrite sets up a fresh Dendrite (SQLite in a new directory) named
// "localhost:<https port>", with a certificate from ca, trusting ca for the
// servers it talks to, and stops it when the test ends. Its directory
// (config, databases, log) is kept when the test fails.
func startDendrite(t testing.TB, ca *shoaltest.CA) *dendrite {
	t.Helper()
	bin := findDendrite(t)
	genConfig := dendriteTool(t, bin, "generate-config")
	genKeys := dendriteTool(t, bin, "generate-keys")
	dir, err := os.MkdirTemp("", "shoal-interop-dendrite-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // after the process has stopped (cleanups run last first)
		if t.Failed() || os.Getenv("SHOAL_KEEP_INTEROP") == "1" {
			t.Logf("dendrite's directory (config, databases, its log and shoal's) is kept: %s", dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("remove dendrite's directory: %v", err)
		}
	})
	d := &dendrite{t: t, dir: dir, ca: ca, logPath: filepath.Join(dir, "dendrite.log"),
		hc: &http.Client{Timeout: 30 * time.Second}}
	d.Version = strings.TrimSpace(string(runTool(t, dir, bin, "-version")))
	if d.Version != dendriteWant {
		t.Logf("dendrite %s, not %s: running the tests all the same", d.Version, dendriteWant)
	}
	keyPath := filepath.Join(dir, "matrix_key.pem")
	runTool(t, dir, genKeys, "-private-key", keyPath)
	secret := make([]byte, 16)
	if _, err := io.ReadFull(rand.Reader, secret); err != nil {
		t.Fatal(err)
	}
	d.secret = hex.EncodeToString(secret)
	certFile, keyFile := ca.Issue(t, dir, "localhost", "127.0.0.1")
	// Only the test CA is trusted: SSL_CERT_DIR replaces the system's
	// directories with one holding nothing else.
	rootsDir := filepath.Join(dir, "roots")
	if err := os.Mkdir(rootsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(rootsDir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	d.env = append(os.Environ(), "SSL_CERT_FILE="+caFile, "SSL_CERT_DIR="+rootsDir)
	t.Cleanup(d.stop)

	// The ports are picked free just before Dendrite binds them, and are
	// part of its name: should another process take one meanwhile, start
	// afresh on others.
	const attempts = 3
	for attempt := 1; ; attempt++ {
		httpPort, httpsPort := freePort(t), freePort(t)
		for httpsPort == httpPort {
			httpsPort = freePort(t)
		}
		d.ServerName = "localhost:" + httpsPort
		d.ClientURL = "http://127.0.0.1:" + httpPort
		d.FederationURL = "https://" + d.ServerName
		d.runDir = filepath.Join(dir, fmt.Sprint("run", attempt))
		if err := os.Mkdir(d.runDir, 0o700); err != nil {
			t.Fatal(err)
		}
		generated := runTool(t, d.runDir, genConfig, "-dir", d.runDir, "-server", d.ServerName)
		cfgPath := filepath.Join(d.runDir, "dendrite.yaml")
		if err := os.WriteFile(cfgPath, dendriteConfig(t, generated, d.runDir, d.ServerName, keyPath, d.secret), 0o600); err != nil {
			t.Fatal(err)
		}
		d.argv = []string{bin, "-config", cfgPath,
			"-http-bind-address", "127.0.0.1:" + httpPort,
			"-https-bind-address", "127.0.0.1:" + httpsPort,
			"-tls-cert", certFile, "-tls-key", keyFile}
		d.launch(t)
		err := d.ready()
		if err == nil {
			return d
		}
		_ = d.halt() // it has exited, or is stuck: its log tells
		if attempt == attempts || !strings.Contains(d.LogTail(4000), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("dendrite could not bind its ports, trying others: %v", err)
	}
}

// launch starts the Dendrite process, its output appended to its log.
func (d *dendrite) launch(t testing.TB) {
	t.Helper()
	logFile, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(d.argv[0], d.argv[1:]...)
	cmd.Dir = d.runDir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = d.env
	cmd.SysProcAttr = childAttrs()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start dendrite: %v", err)
	}
	exited := make(chan struct{})
	d.cmd, d.exited, d.stopped = cmd, exited, false
	go func() {
		d.waitErr = cmd.Wait()
		logFile.Close()
		close(exited)
	}()
}

// waitReady waits for Dendrite to serve, failing the test otherwise.
func (d *dendrite) waitReady(t testing.TB) {
	t.Helper()
	if err := d.ready(); err != nil {
		t.Fatal(err)
	}
}

// ready polls the client and federation listeners until both answer.
func (d *dendrite) ready() error {
	tlsClient := d.federationHTTP()
	defer tlsClient.CloseIdleConnections()
	deadline := time.Now().Add(dendriteStartTimeout)
	var last error
	for time.Now().Before(deadline) {
		last = nil
		for _, probe := range []struct {
			hc  *http.Client
			url string
		}{{d.hc, d.ClientURL + "/_matrix/client/versions"}, {tlsClient, d.FederationURL + "/_matrix/federation/v1/version"}} {
			resp, err := probe.hc.Get(probe.url)
			if err != nil {
				last = err
				break
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				last = fmt.Errorf("%s: %s", probe.url, resp.Status)
				break
			}
		}
		if last == nil {
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("dendrite exited while starting (%v); its log ends:\n%s", d.waitErr, d.LogTail(4000))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("dendrite did not answer within %v (last: %v); its log ends:\n%s", dendriteStartTimeout, last, d.LogTail(4000))
}

// federationHTTP is an HTTPS client for Dendrite's federation listener
// that trusts the certificate Dendrite was given.
func (d *dendrite) federationHTTP() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: d.ca.Pool()}}}
}

// Stop sends SIGTERM and waits; after dendriteStopTimeout it kills. It
// fails the test if Dendrite had exited on its own.
func (d *dendrite) Stop(t testing.TB) {
	t.Helper()
	if err := d.halt(); err != nil {
		t.Error(err)
	}
}

// halt stops the running process; the error says it had already exited.
func (d *dendrite) halt() error {
	if d.stopped {
		return nil
	}
	d.stopped = true
	select {
	case <-d.exited:
		return fmt.Errorf("dendrite had exited by itself: %v; its log ends:\n%s", d.waitErr, d.LogTail(4000))
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop dendrite: %w", err)
	}
	select {
	case <-d.exited:
	case <-time.After(dendriteStopTimeout):
		_ = d.cmd.Process.Kill()
		<-d.exited
		d.t.Logf("dendrite still running %v after SIGTERM: killed", dendriteStopTimeout)
	}
	return nil
}

// stop ends the test's Dendrite (a cleanup).
func (d *dendrite) stop() {
	if d.cmd != nil {
		d.Stop(d.t)
	}
}

// LogTail is the last n bytes of Dendrite's output.
func (d *dendrite) LogTail(n int) string { return fileTail(d.logPath, n) }

// LogGrep is every line of Dendrite's output containing s.
func (d *dendrite) LogGrep(s string) string { return fileGrep(d.logPath, s) }

// Register creates a user through the shared-secret admin API
// (/_synapse/admin/v1/register) and returns a logged-in mautrix client.
func (d *dendrite) Register(localpart string) *mautrix.Client {
	d.t.Helper()
	const path = "/_synapse/admin/v1/register"
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	d.clientJSON(http.MethodGet, path, nil, &nonce)
	password := "password-" + localpart
	mac := hmac.New(sha1.New, []byte(d.secret))
	mac.Write([]byte(nonce.Nonce + "\x00" + localpart + "\x00" + password + "\x00notadmin"))
	var ans struct {
		UserID      id.UserID   `json:"user_id"`
		AccessToken string      `json:"access_token"`
		DeviceID    id.DeviceID `json:"device_id"`
	}
	d.clientJSON(http.MethodPost, path, map[string]any{"nonce": nonce.Nonce, "username": localpart,
		"password": password, "admin": false, "mac": hex.EncodeToString(mac.Sum(nil))}, &ans)
	if ans.AccessToken == "" || ans.UserID != d.UserID(localpart) {
		d.t.Fatalf("dendrite: register %s: answer %+v", localpart, ans)
	}
	cli, err := mautrix.NewClient(d.ClientURL, ans.UserID, ans.AccessToken)
	if err != nil {
		d.t.Fatal(err)
	}
	cli.DeviceID = ans.DeviceID
	return cli
}

// UserID is the full ID of localpart on Dendrite.
func (d *dendrite) UserID(localpart string) id.UserID { return id.NewUserID(localpart, d.ServerName) }

func (d *dendrite) clientJSON(method, path string, body, out any) {
	d.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			d.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, d.ClientURL+path, rd)
	if err != nil {
		d.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := d.hc.Do(req)
	if err != nil {
		d.t.Fatalf("dendrite %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		d.t.Fatalf("dendrite %s %s: %s %s", method, path, resp.Status, raw)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		d.t.Fatalf("dendrite %s %s: %v in %s", method, path, err, raw)
	}
}

// startShoal runs a shoal node named "127.0.0.1:<port of its HTTPS
// listener>" with a certificate from ca, trusting ca for other servers and
// allowed to dial loopback. Its debug log goes to logPath (kept with
// Dendrite's when a test fails).
func startShoal(t testing.TB, ca *shoaltest.CA, logPath string, opts ...shoaltest.Option) *shoaltest.Node {
	t.Helper()
	port := freePort(t)
	certFile, keyFile := ca.Issue(t, t.TempDir(), "127.0.0.1")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	all := append([]shoaltest.Option{func(cfg *gateway.NodeConfig) {
		cfg.Gateway.ServerName = "127.0.0.1:" + port
		cfg.TLSListen = []string{"127.0.0.1:" + port}
		cfg.TLSCert, cfg.TLSKey = certFile, keyFile
		cfg.Gateway.Federation = gateway.FederationConfig{RootCAs: ca.Pool(), AllowPrivate: true}
		cfg.Log = slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}}, opts...)
	t.Cleanup(func() { logFile.Close() }) // runs after the node's own cleanup has stopped it
	return shoaltest.Start(t, all...)
}

// fileTail is the last n bytes of a log file.
func fileTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(data) > n {
		data = data[len(data)-n:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	return string(bytes.TrimSpace(data))
}

// fileGrep is every line of a log file containing s.
func fileGrep(path, s string) string {
	data, _ := os.ReadFile(path)
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
