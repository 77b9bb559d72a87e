package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// matrix-js-sdk with its Rust crypto (matrix-sdk-crypto-wasm) sets up
// cross-signing, secret storage and key backup, exchanges megolm-encrypted
// messages between two users, and a new device restores the backup and
// decrypts the history: the E2EE endpoints as a real client uses them.
// Skips like TestMatrixJSSDKClients unless SHOAL_REQUIRE_JS is set.
func TestMatrixJSSDKEncryption(t *testing.T) {
	dir := filepath.Join("testdata", "jsclient")
	_, nodeErr := exec.LookPath("node")
	_, modErr := os.Stat(filepath.Join(dir, "node_modules", "matrix-js-sdk"))
	if modErr == nil {
		_, modErr = os.Stat(filepath.Join(dir, "node_modules", "@matrix-org", "matrix-sdk-crypto-wasm"))
	}
	if nodeErr != nil || modErr != nil {
		if os.Getenv("SHOAL_REQUIRE_JS") != "" {
			t.Fatalf("matrix-js-sdk E2EE test required but not runnable: node: %v, packages: %v", nodeErr, modErr)
		}
		t.Skip("node or matrix-js-sdk not installed (cd cmd/shoal/testdata/jsclient && npm ci)")
	}
	node := shoaltest.Start(t)
	// The script stops itself after 90 s; this bounds a hung node process.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "e2ee.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SHOAL_URL="+node.BaseURL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("matrix-js-sdk E2EE script failed: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `"ok":true`) {
		t.Fatalf("unexpected output:\n%s", out)
	}
	t.Logf("%s", out)
}
