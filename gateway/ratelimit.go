package gateway

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// limitBy says how a rate-limited route is keyed.
type limitBy uint8

const (
	// byIP keys an unauthenticated route by the client's address.
	byIP limitBy = iota + 1
	// byUser keys an authenticated route by the user, once authed() has
	// checked the token (a token names its user, so keying before the
	// check would let anyone drain another user's bucket).
	byUser
)

// rateLimitedRoutes are the routes with a rate limit, by the pattern they
// are registered with: those the spec marks rate-limited (a 429 response in
// data/api/client-server), including ones shoal does not serve yet so they
// are limited from the day they are added, and a few unauthenticated ones
// shoal adds because anyone can make them cost an actor request. Other
// routes are bounded by the per-client concurrency limit only.
var rateLimitedRoutes = map[string]limitBy{
	// Unauthenticated.
	"GET /_matrix/client/v3/login":                                        byIP,
	"POST /_matrix/client/v3/login":                                       byIP,
	"POST /_matrix/client/v3/refresh":                                     byIP,
	"POST /_matrix/client/v3/register":                                    byIP,
	"GET /_matrix/client/v3/register/available":                           byIP,
	"GET /_matrix/client/v1/register/m.login.registration_token/validity": byIP,
	"GET /_matrix/media/v3/download/{serverName}/{mediaId}":               byIP,
	"GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}":    byIP,
	"GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}":              byIP,
	// shoal's additions.
	"GET /_synapse/admin/v1/register":                     byIP,
	"POST /_synapse/admin/v1/register":                    byIP,
	"GET /_matrix/client/v3/publicRooms":                  byIP,
	"GET /_matrix/client/v3/directory/room/{roomAlias}":   byIP,
	"GET /_matrix/client/v3/directory/list/room/{roomId}": byIP,

	// Authenticated.
	"GET /_matrix/client/v3/account/whoami":                                   byUser,
	"POST /_matrix/client/v3/account/password":                                byUser,
	"POST /_matrix/client/v3/account/deactivate":                              byUser,
	"POST /_matrix/client/v3/account/3pid/add":                                byUser,
	"POST /_matrix/client/v3/account/3pid/bind":                               byUser,
	"GET /_matrix/client/v3/capabilities":                                     byUser,
	"POST /_matrix/client/v1/login/get_token":                                 byUser,
	"POST /_matrix/client/v3/join/{roomIdOrAlias}":                            byUser,
	"POST /_matrix/client/v3/knock/{roomIdOrAlias}":                           byUser,
	"POST /_matrix/client/v3/rooms/{roomId}/join":                             byUser,
	"POST /_matrix/client/v3/rooms/{roomId}/invite":                           byUser,
	"POST /_matrix/client/v3/rooms/{roomId}/leave":                            byUser,
	"POST /_matrix/client/v3/rooms/{roomId}/forget":                           byUser,
	"GET /_matrix/client/v3/rooms/{roomId}/aliases":                           byUser,
	"PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}":                   byUser,
	"POST /_matrix/client/v3/rooms/{roomId}/read_markers":                     byUser,
	"POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}":  byUser,
	"POST /_matrix/client/v3/rooms/{roomId}/report":                           byUser,
	"POST /_matrix/client/v3/users/{userId}/report":                           byUser,
	"GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event":                byUser,
	"GET /_matrix/client/v1/rooms/{roomId}/hierarchy":                         byUser,
	"GET /_matrix/client/v1/rooms/{roomId}/threads":                           byUser,
	"GET /_matrix/client/v1/mutual_rooms":                                     byUser,
	"POST /_matrix/client/v3/search":                                          byUser,
	"POST /_matrix/client/v3/user_directory/search":                           byUser,
	"POST /_matrix/client/v3/user/{userId}/openid/request_token":              byUser,
	"PUT /_matrix/client/v3/presence/{userId}/status":                         byUser,
	"PUT /_matrix/client/v3/profile/{userId}/{keyName}":                       byUser,
	"DELETE /_matrix/client/v3/profile/{userId}/{keyName}":                    byUser,
	"POST /_matrix/client/v3/pushers/set":                                     byUser,
	"PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}":                 byUser,
	"GET /_matrix/client/v3/voip/turnServer":                                  byUser,
	"GET /_matrix/client/v3/room_keys/version":                                byUser,
	"POST /_matrix/client/v3/room_keys/version":                               byUser,
	"GET /_matrix/client/v3/room_keys/version/{version}":                      byUser,
	"PUT /_matrix/client/v3/room_keys/version/{version}":                      byUser,
	"DELETE /_matrix/client/v3/room_keys/version/{version}":                   byUser,
	"GET /_matrix/client/v3/room_keys/keys":                                   byUser,
	"PUT /_matrix/client/v3/room_keys/keys":                                   byUser,
	"DELETE /_matrix/client/v3/room_keys/keys":                                byUser,
	"GET /_matrix/client/v3/room_keys/keys/{roomId}":                          byUser,
	"PUT /_matrix/client/v3/room_keys/keys/{roomId}":                          byUser,
	"DELETE /_matrix/client/v3/room_keys/keys/{roomId}":                       byUser,
	"GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}":              byUser,
	"PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}":              byUser,
	"DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}":           byUser,
	"GET /_matrix/client/v1/media/config":                                     byUser,
	"GET /_matrix/client/v1/media/preview_url":                                byUser,
	"GET /_matrix/client/v1/media/download/{serverName}/{mediaId}":            byUser,
	"GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}": byUser,
	"GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}":           byUser,
	"GET /_matrix/media/v3/config":                                            byUser,
	"GET /_matrix/media/v3/preview_url":                                       byUser,
	"POST /_matrix/media/v3/upload":                                           byUser,
	"PUT /_matrix/media/v3/upload/{serverName}/{mediaId}":                     byUser,
	"POST /_matrix/media/v1/create":                                           byUser,
}

// Rate limit defaults: a client may burst, then keeps a steady rate.
const (
	DefaultRateLimitPerSecond = 10
	DefaultRateLimitBurst     = 50
)

// rateLimiter is a token bucket per key (user ID or client IP) for the
// routes of rateLimitedRoutes; operators and test harnesses switch it off
// with --no-rate-limit.
type rateLimiter struct {
	enabled bool
	now     func() time.Time
	rate    float64 // tokens per second
	burst   float64

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(enabled bool, rate float64, burst int, now func() time.Time) *rateLimiter {
	if rate <= 0 {
		rate = DefaultRateLimitPerSecond
	}
	if burst <= 0 {
		burst = DefaultRateLimitBurst
	}
	return &rateLimiter{enabled: enabled, now: now, rate: rate, burst: float64(burst), buckets: map[string]*bucket{}}
}

// allow takes a token for key or returns 429 M_LIMIT_EXCEEDED with the
// time until the next token (writeError adds Retry-After from it).
func (l *rateLimiter) allow(key string) error {
	if !l.enabled {
		return nil
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) > 100_000 {
			l.evict(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return errLimited(max(1, int((1-b.tokens)/l.rate*1000)))
	}
	b.tokens--
	return nil
}

func errLimited(retryMs int) error {
	e := errStatus(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "too many requests")
	e.Extra = map[string]any{"retry_after_ms": retryMs}
	return e
}

// evict drops full buckets so the map stays bounded.
func (l *rateLimiter) evict(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
		}
	}
}

// rateLimitIP wraps the handler of a route limited by client address.
func (s *Server) rateLimitIP(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.limiter.allow("ip:" + clientIP(r)); err != nil {
			s.metrics.limited.WithLabelValues("rate").Inc()
			writeError(w, r, err)
			return
		}
		h(w, r)
	}
}

// limitUser applies the per-user rate limit when the matched route has one.
func (s *Server) limitUser(r *http.Request, userID string) error {
	if rateLimitedRoutes[r.Pattern] != byUser {
		return nil
	}
	if err := s.limiter.allow("user:" + userID); err != nil {
		s.metrics.limited.WithLabelValues("rate").Inc()
		return err
	}
	return nil
}

// DefaultMaxConcurrent is how many requests one client (an IP address
// before authentication, a user after) may have in flight.
const DefaultMaxConcurrent = 64

// concurrency bounds the requests in flight per client, so one client
// cannot hold every goroutine and actor mailbox of a node (long-polls
// included: a user's devices each hold one).
type concurrency struct {
	max   int
	mu    sync.Mutex
	inUse map[string]int
}

func newConcurrency(max int) *concurrency {
	if max <= 0 {
		max = DefaultMaxConcurrent
	}
	return &concurrency{max: max, inUse: map[string]int{}}
}

// acquire takes a slot for key; release gives it back (once).
func (c *concurrency) acquire(key string) (release func(), ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inUse[key] >= c.max {
		return nil, false
	}
	c.inUse[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.inUse[key]--; c.inUse[key] <= 0 {
				delete(c.inUse, key)
			}
		})
	}, true
}

// reqState is what the middleware and authed() share about one request.
type reqState struct {
	user    string
	release func() // the client's concurrency slot
}

type reqStateKey struct{}

func stateOf(ctx context.Context) *reqState {
	st, _ := ctx.Value(reqStateKey{}).(*reqState)
	return st
}

// moveSlotToUser trades the request's per-IP slot (if any) for one of its
// user, now that authentication says who it is: users behind one address
// (a NAT) do not share a budget, and a user's long-polls do not count
// against it.
func (s *Server) moveSlotToUser(r *http.Request, userID string) error {
	st := stateOf(r.Context())
	if st == nil {
		return nil
	}
	st.user = userID
	release, ok := s.conc.acquire("user:" + userID)
	if !ok {
		s.metrics.limited.WithLabelValues("concurrency").Inc()
		return errLimited(1000)
	}
	if st.release != nil {
		st.release()
	}
	st.release = release
	return nil
}
