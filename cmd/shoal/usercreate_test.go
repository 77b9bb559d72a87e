package main

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
)

// `shoal user create` registers accounts on a running node through the
// shared-secret API, reading the generated secret from the data dir.
func TestUserCreateCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real process")
	}
	dataDir, addr := t.TempDir(), freePort(t)
	startProc(t, dataDir, addr)
	none := func(string) string { return "" }

	var out bytes.Buffer
	code := run([]string{"user", "create", "--url", "http://" + addr, "--data-dir", dataDir,
		"--user", "admin1", "--password", "s3cret-pw", "--admin"}, &out, &out, none)
	if code != 0 || !strings.Contains(out.String(), "@admin1:proc.test") {
		t.Fatalf("user create exited %d: %s", code, out.String())
	}

	cli, err := mautrix.NewClient("http://"+addr, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp := must(cli.Login(bg(), &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "admin1"},
		Password:   "s3cret-pw",
	}))(t)
	if resp.UserID != "@admin1:proc.test" {
		t.Fatalf("logged in as %s", resp.UserID)
	}

	// The same name again is refused; a wrong secret is refused.
	out.Reset()
	if code := run([]string{"user", "create", "--url", "http://" + addr, "--data-dir", dataDir,
		"--user", "admin1", "--password", "x"}, &out, &out, none); code == 0 {
		t.Fatalf("creating an existing user succeeded: %s", out.String())
	}
	out.Reset()
	if code := run([]string{"user", "create", "--url", "http://" + addr, "--shared-secret", "wrong",
		"--user", "eve", "--password", "x"}, &out, &out, none); code == 0 {
		t.Fatalf("wrong shared secret accepted: %s", out.String())
	}
	r, err := http.Get("http://" + addr + "/_matrix/client/v3/register/available?username=eve")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusOK {
		t.Fatalf("eve was created with a wrong secret (availability %d)", r.StatusCode)
	}
}
