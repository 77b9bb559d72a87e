package gateway

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors"
)

// OpenID tokens expire after their lifetime and are bound to the key of
// the server that made them.
func TestOpenIDTokenExpiryAndKey(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	mk := func() *Server {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		return &Server{cfg: Config{Now: func() time.Time { return now }},
			server: &actors.ServerIdentity{ServerName: "a.test", KeyID: "ed25519:k", PrivateKey: priv}}
	}
	s, other := mk(), mk()
	tok, err := s.newOpenIDToken("@alice:a.test", now.Add(openIDTokenLifetime))
	if err != nil {
		t.Fatal(err)
	}
	if u := s.openIDUser(tok); u != "@alice:a.test" {
		t.Fatalf("fresh token: %q", u)
	}
	if u := other.openIDUser(tok); u != "" {
		t.Fatalf("another key accepted the token: %q", u)
	}
	now = now.Add(openIDTokenLifetime - time.Millisecond)
	if s.openIDUser(tok) == "" {
		t.Fatal("token expired early")
	}
	now = now.Add(time.Millisecond)
	if u := s.openIDUser(tok); u != "" {
		t.Fatalf("expired token accepted: %q", u)
	}
}

// Remote thumbnails are asked for, and kept, in the local preset sizes.
func TestRoundThumb(t *testing.T) {
	cases := []struct {
		in   thumbParams
		w, h int
	}{
		{thumbParams{width: 10, height: 10, method: "crop"}, 32, 32},
		{thumbParams{width: 64, height: 64, method: "crop"}, 96, 96},
		{thumbParams{width: 96, height: 97, method: "crop"}, 320, 320},
		{thumbParams{width: 5000, height: 5000, method: "crop"}, 640, 640},
		{thumbParams{width: 100, height: 100, method: "scale"}, 320, 240},
		{thumbParams{width: 700, height: 100, method: "scale"}, 800, 600},
		{thumbParams{width: 9000, height: 9000, method: "scale"}, 1280, 960},
	}
	for _, c := range cases {
		got := roundThumb(c.in)
		if got.width != c.w || got.height != c.h || got.method != c.in.method {
			t.Errorf("%+v → %+v, want %dx%d", c.in, got, c.w, c.h)
		}
	}
}
