package gateway_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// A client of a.test gets an OpenID token; a third party (here b.test's
// side of the test) checks it with a.test's unauthenticated
// /openid/userinfo and learns the user. Forged, tampered and foreign
// tokens are 401 M_UNKNOWN_TOKEN.
func TestFederationOpenID(t *testing.T) {
	fed, a, b := twoNodes(t)
	ctx := context.Background()
	alice := a.Register("alice")
	tok, err := alice.RequestOpenIDToken(ctx)
	if err != nil {
		t.Fatalf("request_token: %v", err)
	}
	if tok.TokenType != "Bearer" || tok.MatrixServerName != "a.test" || tok.ExpiresIn != 3600 || tok.AccessToken == "" {
		t.Fatalf("token %+v", tok)
	}
	info := func(node interface{ ServerName() string }, token string) (int, map[string]any) {
		t.Helper()
		n := a
		if node.ServerName() == "b.test" {
			n = b
		}
		return fedGet(t, fed, n, "/_matrix/federation/v1/openid/userinfo?access_token="+url.QueryEscape(token), "")
	}
	st, out := info(a, tok.AccessToken)
	if st != http.StatusOK || out["sub"] != alice.UserID.String() {
		t.Fatalf("userinfo: %d %v", st, out)
	}
	// a.test's token means nothing to b.test.
	if st, out := info(b, tok.AccessToken); st != http.StatusUnauthorized || out["errcode"] != "M_UNKNOWN_TOKEN" {
		t.Fatalf("foreign token: %d %v", st, out)
	}
	tampered := []byte(tok.AccessToken)
	i := strings.IndexByte(tok.AccessToken, '.') - 2
	tampered[i] ^= 1
	for _, bad := range []string{"", "nonsense", string(tampered), tok.AccessToken + "x"} {
		if st, out := info(a, bad); st != http.StatusUnauthorized || out["errcode"] != "M_UNKNOWN_TOKEN" {
			t.Fatalf("token %q: %d %v", bad, st, out)
		}
	}
	// Another user's token endpoint is refused.
	bob := a.Register("bob")
	_, err = bob.MakeRequest(ctx, http.MethodPost, bob.BuildClientURL("v3", "user", alice.UserID, "openid", "request_token"), struct{}{}, nil)
	if httpStatus(err) != http.StatusForbidden {
		t.Fatalf("token for another user: %v", err)
	}
	// A deactivated account's tokens stop working.
	wantHTTP(t, a, "POST", "/_matrix/client/v3/account/deactivate", alice.AccessToken, map[string]any{
		"auth": map[string]string{"type": "m.login.password", "user": "alice", "password": "password-alice"}}, 200, "")
	if st, out := info(a, tok.AccessToken); st != http.StatusUnauthorized {
		t.Fatalf("deactivated user's token: %d %v", st, out)
	}
}
