package fedclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoal-chat/shoal/eventgraph"
)

// Caching of /.well-known/matrix/server (server-server API, "Resolving
// server names", step 3): answers are kept for their Cache-Control max-age
// or Expires time, 24 hours when they give none, never more than 48 hours;
// failures are kept for an hour.
const (
	wellKnownDefaultTTL = 24 * time.Hour
	wellKnownMaxTTL     = 48 * time.Hour
	wellKnownErrorTTL   = time.Hour
	wellKnownMaxBody    = 64 << 10
	wellKnownTimeout    = 10 * time.Second
	wellKnownRedirects  = 5
	wellKnownMaxEntries = 10000
)

type wellKnownEntry struct {
	server  string // the delegated server name; "" when the lookup failed
	expires time.Time
}

type wellKnownCache struct {
	c      *Client
	http   *http.Client
	mu     sync.Mutex
	m      map[string]wellKnownEntry
	flight map[string]chan struct{}
}

func newWellKnownCache(c *Client) *wellKnownCache {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return c.dialAny(ctx, []string{addr})
		},
		TLSClientConfig:        c.tlsConf.Clone(),
		TLSHandshakeTimeout:    handshakeTimeout,
		ResponseHeaderTimeout:  wellKnownTimeout,
		MaxResponseHeaderBytes: 64 << 10,
		ForceAttemptHTTP2:      true,
		MaxIdleConnsPerHost:    1,
		IdleConnTimeout:        30 * time.Second,
	}
	return &wellKnownCache{
		c: c,
		http: &http.Client{
			Transport: tr,
			Timeout:   wellKnownTimeout,
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= wellKnownRedirects {
					return errors.New("fedclient: too many redirects for /.well-known/matrix/server")
				}
				for _, v := range via {
					if v.URL.String() == req.URL.String() {
						return errors.New("fedclient: redirect loop for /.well-known/matrix/server")
					}
				}
				if req.URL.Scheme != "https" {
					return errors.New("fedclient: /.well-known/matrix/server redirected off HTTPS")
				}
				return nil
			},
		},
		m:      map[string]wellKnownEntry{},
		flight: map[string]chan struct{}{},
	}
}

// lookup returns the server name host delegates to, if it does. Concurrent
// lookups of one host share one fetch.
func (w *wellKnownCache) lookup(ctx context.Context, host string) (string, bool) {
	host = strings.ToLower(host)
	for {
		w.mu.Lock()
		if e, ok := w.m[host]; ok && w.c.cfg.Now().Before(e.expires) {
			w.mu.Unlock()
			return e.server, e.server != ""
		}
		ch, busy := w.flight[host]
		if !busy {
			ch = make(chan struct{})
			w.flight[host] = ch
			w.mu.Unlock()
			break
		}
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return "", false
		}
	}
	// The fetch outlives the request that started it: a caller giving up
	// early must not leave an error cached for an hour.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wellKnownTimeout)
	server, ttl, err := w.fetch(fctx, host)
	cancel()
	if err != nil {
		w.c.cfg.Log.Debug("fedclient: no delegation from /.well-known", "host", host, "err", err)
		server, ttl = "", wellKnownErrorTTL
	}
	w.mu.Lock()
	if len(w.m) >= wellKnownMaxEntries {
		w.evictLocked()
	}
	if ttl > 0 {
		w.m[host] = wellKnownEntry{server: server, expires: w.c.cfg.Now().Add(ttl)}
	}
	close(w.flight[host])
	delete(w.flight, host)
	w.mu.Unlock()
	return server, server != ""
}

// evictLocked drops expired entries, or, if none is, an arbitrary half.
func (w *wellKnownCache) evictLocked() {
	now := w.c.cfg.Now()
	for k, e := range w.m {
		if !now.Before(e.expires) {
			delete(w.m, k)
		}
	}
	for k := range w.m {
		if len(w.m) < wellKnownMaxEntries/2 {
			break
		}
		delete(w.m, k)
	}
}

// fetch asks https://host/.well-known/matrix/server; the certificate must
// be valid for host.
func (w *wellKnownCache) fetch(ctx context.Context, host string) (string, time.Duration, error) {
	u := "https://" + host
	if w.c.cfg.WellKnownPort != 443 {
		u += ":" + strconv.Itoa(w.c.cfg.WellKnownPort)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/.well-known/matrix/server", nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := w.http.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, wellKnownMaxBody+1))
	if err != nil {
		return "", 0, err
	}
	if len(body) > wellKnownMaxBody {
		return "", 0, errors.New("response too large")
	}
	var doc struct {
		Server *string `json:"m.server"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", 0, fmt.Errorf("bad JSON: %w", err)
	}
	if doc.Server == nil {
		return "", 0, errors.New("no m.server")
	}
	if _, _, err := eventgraph.ParseServerName(*doc.Server); err != nil {
		return "", 0, err
	}
	return *doc.Server, cacheTTL(resp.Header, w.c.cfg.Now()), nil
}

// cacheTTL reads how long a response may be cached from Cache-Control
// (no-store, no-cache, max-age) or Expires, bounded to wellKnownMaxTTL.
func cacheTTL(h http.Header, now time.Time) time.Duration {
	if cc := h.Get("Cache-Control"); cc != "" {
		for _, d := range strings.Split(cc, ",") {
			d = strings.ToLower(strings.TrimSpace(d))
			switch {
			case d == "no-store" || d == "no-cache":
				return 0
			case strings.HasPrefix(d, "max-age="):
				secs, err := strconv.ParseInt(strings.Trim(strings.TrimPrefix(d, "max-age="), `"`), 10, 64)
				if err != nil || secs < 0 {
					return wellKnownDefaultTTL
				}
				return min(time.Duration(min(secs, int64(wellKnownMaxTTL/time.Second)))*time.Second, wellKnownMaxTTL)
			}
		}
	}
	if e := h.Get("Expires"); e != "" {
		t, err := http.ParseTime(e)
		if err != nil {
			return 0 // an invalid Expires means "already expired" (RFC 9111)
		}
		return min(max(t.Sub(now), 0), wellKnownMaxTTL)
	}
	return wellKnownDefaultTTL
}
