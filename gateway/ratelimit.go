package gateway

import (
	"net/http"
	"sync"
	"time"
)

// rateLimiter is a token bucket per key (user ID or client IP). It guards
// the endpoints the spec marks rate-limited; operators and test harnesses
// switch it off with --no-rate-limit.
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

func newRateLimiter(enabled bool, now func() time.Time) *rateLimiter {
	return &rateLimiter{enabled: enabled, now: now, rate: 10, burst: 50, buckets: map[string]*bucket{}}
}

// allow takes a token for key or returns 429 M_LIMIT_EXCEEDED with the
// time until the next token.
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
		wait := int((1 - b.tokens) / l.rate * 1000)
		e := errStatus(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "too many requests")
		e.Extra = map[string]any{"retry_after_ms": wait}
		return e
	}
	b.tokens--
	return nil
}

// evict drops full buckets so the map stays bounded.
func (l *rateLimiter) evict(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
		}
	}
}
