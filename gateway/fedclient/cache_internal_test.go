package fedclient

import (
	"context"
	"net/http"
	"testing"
	"time"
)

func TestCacheTTL(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		h    http.Header
		want time.Duration
	}{
		{http.Header{}, 24 * time.Hour},
		{http.Header{"Cache-Control": {"public, max-age=600"}}, 10 * time.Minute},
		{http.Header{"Cache-Control": {"max-age=999999999"}}, 48 * time.Hour},
		{http.Header{"Cache-Control": {"max-age=abc"}}, 24 * time.Hour},
		{http.Header{"Cache-Control": {"no-store"}}, 0},
		{http.Header{"Expires": {now.Add(2 * time.Hour).Format(http.TimeFormat)}}, 2 * time.Hour},
		{http.Header{"Expires": {now.Add(100 * time.Hour).Format(http.TimeFormat)}}, 48 * time.Hour},
		{http.Header{"Expires": {"0"}}, 0},
		{http.Header{"Cache-Control": {"max-age=60"}, "Expires": {now.Add(2 * time.Hour).Format(http.TimeFormat)}}, time.Minute},
	}
	for _, c := range cases {
		if got := cacheTTL(c.h, now); got != c.want {
			t.Errorf("%v: %v, want %v", c.h, got, c.want)
		}
	}
}

// Failed lookups are cached for an hour.
func TestWellKnownErrorCached(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := New(Config{AllowPrivate: true, WellKnownPort: 1, Now: func() time.Time { return now },
		LookupHost: func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil }})
	defer c.Close()
	if _, ok := c.wellKnown.lookup(t.Context(), "x.test"); ok {
		t.Fatal("delegation from nowhere")
	}
	c.wellKnown.mu.Lock()
	e, ok := c.wellKnown.m["x.test"]
	c.wellKnown.mu.Unlock()
	if !ok || e.server != "" || !e.expires.Equal(now.Add(time.Hour)) {
		t.Fatalf("error entry %+v %v", e, ok)
	}
}
