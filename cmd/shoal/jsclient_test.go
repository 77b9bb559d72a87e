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

// matrix-js-sdk, a client shoal did not write, registers, creates a room,
// joins and talks through a real node. CI installs its npm packages and sets
// SHOAL_REQUIRE_JS so that the test fails rather than skips without them.
func TestMatrixJSSDKClients(t *testing.T) {
	dir := filepath.Join("testdata", "jsclient")
	_, nodeErr := exec.LookPath("node")
	_, modErr := os.Stat(filepath.Join(dir, "node_modules", "matrix-js-sdk"))
	if nodeErr != nil || modErr != nil {
		if os.Getenv("SHOAL_REQUIRE_JS") != "" {
			t.Fatalf("matrix-js-sdk test required but not runnable: node: %v, packages: %v", nodeErr, modErr)
		}
		t.Skip("node or matrix-js-sdk not installed (cd cmd/shoal/testdata/jsclient && npm ci)")
	}
	node := shoaltest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "e2e.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SHOAL_URL="+node.BaseURL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("matrix-js-sdk e2e failed: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `"ok":true`) {
		t.Fatalf("unexpected output:\n%s", out)
	}
	t.Logf("%s", out)
}
