package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-chat/shoal/actors"
)

// Config is what the gateway needs to know about the deployment.
type Config struct {
	ServerName string
	// Registration is "open", "token" or "closed".
	Registration string
	// RegistrationTokens are accepted by m.login.registration_token when
	// Registration is "token".
	RegistrationTokens []string
	// RegistrationSharedSecret enables /_synapse/admin/v1/register.
	RegistrationSharedSecret string
	// RestrictProfileLookups answers profile look-ups with 403 M_FORBIDDEN
	// unless the caller is authenticated and shares a room with the user
	// or the user is in a public room (MSC4170). Off, as Synapse's default:
	// profiles are public.
	RestrictProfileLookups bool
	// Terms are the policies users must accept at registration (MSC1692);
	// empty means no m.login.terms stage.
	Terms map[string]TermsPolicy
	// PublicBaseURL is advertised in /.well-known/matrix/client.
	PublicBaseURL string
	// WellKnownServer is advertised in /.well-known/matrix/server (delegation).
	WellKnownServer string
	// RateLimit enables per-user and per-IP rate limits on the routes of
	// rateLimitedRoutes: RateLimitPerSecond tokens a second, bursts of up to
	// RateLimitBurst (zero: DefaultRateLimitPerSecond, DefaultRateLimitBurst).
	RateLimit          bool
	RateLimitPerSecond float64
	RateLimitBurst     int
	// MaxConcurrent bounds the requests in flight per client: per user once
	// authenticated, and (with RateLimit) per IP address until then (zero:
	// DefaultMaxConcurrent).
	MaxConcurrent int
	// Listener limits (zero: the Default* constants of listen.go).
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
	MaxBodyBytes      int64
	// PasswordHashCost is the bcrypt cost of new password hashes (zero:
	// actors.DefaultPasswordCost). Only tests lower it: under the race
	// detector one default-cost hash takes about a second here.
	PasswordHashCost int
	// Federation configures the outbound federation client and key
	// fetching (federation.go).
	Federation FederationConfig
	// PushAllowPrivate lets pushes go to push gateways on loopback and
	// private addresses (tests, a gateway on the same host); off, only
	// public addresses are reached (push.go).
	PushAllowPrivate bool
	// Media bounds the content repository (client_media.go).
	Media MediaConfig
	Log   *slog.Logger
	Now   func() time.Time
}

// TermsPolicy is one document users accept at registration.
type TermsPolicy struct {
	Version string                       `yaml:"version" json:"version"`
	Langs   map[string]TermsPolicyString `yaml:"langs" json:"-"`
}

// TermsPolicyString is a policy's name and URL in one language.
type TermsPolicyString struct {
	Name string `yaml:"name" json:"name"`
	URL  string `yaml:"url" json:"url"`
}

// Server is the HTTP side of one shoal node.
type Server struct {
	cfg     Config
	router  actors.Router
	server  *actors.ServerIdentity
	log     *slog.Logger
	mux     *http.ServeMux
	handler http.Handler
	limiter *rateLimiter
	conc    *concurrency
	metrics *metrics

	// uia holds user-interactive auth sessions (short-lived, node-local:
	// a client completes a UIA flow against the node it started it on).
	uia *uiaSessions

	fallbacks map[string]bool

	// fed is the outbound federation client (federation.go).
	fed *federation

	// lastCreateTS makes create events' timestamps unique (see createTS).
	lastCreateTS atomic.Int64

	// stopCtx is cancelled when shutdown begins, so long-polls return at
	// once instead of holding the drain up.
	stopCtx context.Context
	stopAll context.CancelFunc

	mu        sync.Mutex
	listeners []*http.Server
	quic      []*quicListener
}

// New builds the gateway for router and the server identity.
func New(cfg Config, router actors.Router, server *actors.ServerIdentity) *Server {
	return newServer(cfg, router, server, newMetrics())
}

func newServer(cfg Config, router actors.Router, server *actors.ServerIdentity, m *metrics) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.applyListenerDefaults()
	s := &Server{cfg: cfg, router: router, server: server, log: cfg.Log, mux: http.NewServeMux(),
		uia: newUIASessions(cfg.Now), metrics: m, conc: newConcurrency(cfg.MaxConcurrent)}
	s.limiter = newRateLimiter(cfg.RateLimit, cfg.RateLimitPerSecond, cfg.RateLimitBurst, cfg.Now)
	s.stopCtx, s.stopAll = context.WithCancel(context.Background())
	s.routes()
	s.handler = s.middleware(s.mux)
	return s
}

// Handler is the whole HTTP API as one handler.
func (s *Server) Handler() http.Handler { return s.handler }

// handle registers h for "METHOD /path" and makes other methods on the same
// path answer 405 M_UNRECOGNIZED, as the spec asks. Routes of
// rateLimitedRoutes get their rate limit here (per IP) or in authed()
// (per user).
func (s *Server) handle(pattern string, h http.HandlerFunc) {
	if rateLimitedRoutes[pattern] == byIP {
		h = s.rateLimitIP(h)
	}
	s.mux.HandleFunc(pattern, h)
	if _, path, ok := strings.Cut(pattern, " "); ok {
		s.methodFallback(path)
	}
}

func (s *Server) methodFallback(path string) {
	if s.fallbacks == nil {
		s.fallbacks = map[string]bool{}
	}
	if s.fallbacks[path] {
		return
	}
	s.fallbacks[path] = true
	s.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, errStatus(http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "method not allowed on this endpoint"))
	})
}

func (s *Server) routes() {
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, errStatus(http.StatusNotFound, "M_UNRECOGNIZED", "unrecognized request"))
	})
	s.registerDiscovery()
	s.registerKeys()
	s.registerAccount()
	s.registerRooms()
	s.registerSync()
	s.registerUserData()
	s.registerPushRules()
	s.registerPush()
	s.registerDirectory()
	s.registerRoomsExtra()
	s.registerFederation()
	s.registerMedia()
	s.registerE2EE()
	s.registerModeration()
}

// middleware wraps every request: panic recovery, CORS, body and
// concurrency limits, metrics and the access log.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		st := &reqState{}
		r = r.WithContext(context.WithValue(r.Context(), reqStateKey{}, st))
		s.metrics.inFlight.Inc()
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("gateway: handler panicked", slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
				if !rec.wrote {
					writeError(rec, r, actors.ErrUnknown("internal error"))
				}
			}
			if st.release != nil {
				st.release()
			}
			s.metrics.inFlight.Dec()
			s.logRequest(r, rec, st, time.Since(start))
		}()
		// CORS on every response, preflight included (client-server API,
		// "Web Browser Clients"): the spec's methods plus HEAD, which every
		// GET route answers (MSC4138: list the methods served).
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Methods", corsMethods)
		h.Set("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization")
		if r.Method == http.MethodOptions {
			rec.WriteHeader(http.StatusOK)
			return
		}
		bodyLimit := s.mediaBodyLimit(r) // MaxBodyBytes but for uploads
		if r.ContentLength > bodyLimit {
			writeError(rec, r, errTooLarge)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, bodyLimit)
		// Per address only with rate limits on: harnesses and proxies
		// that send everything from one address switch both off.
		if s.cfg.RateLimit {
			release, ok := s.conc.acquire("ip:" + clientIP(r))
			if !ok {
				s.metrics.limited.WithLabelValues("concurrency").Inc()
				writeError(rec, r, errLimited(1000))
				return
			}
			st.release = release
		}
		next.ServeHTTP(rec, r)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
	bytes  int64
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status, s.wrote = code, true
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wrote = true
	n, err := s.ResponseWriter.Write(b)
	s.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the real writer (flushing, deadlines).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// newHTTPServer applies the limits every listener shares.
func (s *Server) newHTTPServer(tlsConf *tls.Config) *http.Server {
	return &http.Server{
		Handler:           s.handler,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// ServePlain serves plain HTTP on ln until Shutdown.
func (s *Server) ServePlain(ln net.Listener) error {
	hs := s.newHTTPServer(nil)
	s.track(hs)
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("gateway: serve %s: %w", ln.Addr(), err)
	}
	return nil
}

// ServeTLS serves HTTPS (HTTP/1.1 and HTTP/2) on ln until Shutdown.
func (s *Server) ServeTLS(ln net.Listener, tlsConf *tls.Config, opts TLSOptions) error {
	// A copy: net/http adds its protocols to the config it is given, and
	// listeners share one.
	hs := s.newHTTPServer(tlsConf.Clone())
	hs.Handler = s.handlerFor(opts.FederationOnly)
	if opts.AltSvc != "" {
		hs.Handler = withAltSvc(hs.Handler, opts.AltSvc)
	}
	s.track(hs)
	if err := hs.Serve(tls.NewListener(ln, hs.TLSConfig)); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("gateway: serve TLS %s: %w", ln.Addr(), err)
	}
	return nil
}

// track records hs for Shutdown; once Shutdown began it closes hs instead,
// so a listener started late cannot outlive the node.
func (s *Server) track(hs *http.Server) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopCtx.Err() != nil {
		_ = hs.Close()
		return
	}
	s.listeners = append(s.listeners, hs)
}

// Shutdown stops accepting requests and waits (bounded by ctx) for those
// in flight, long-polls included, on every listener at once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopAll()
	s.mu.Lock()
	ls := append([]*http.Server(nil), s.listeners...)
	qs := append([]*quicListener(nil), s.quic...)
	s.mu.Unlock()
	errs := make([]error, len(ls)+len(qs))
	var wg sync.WaitGroup
	for i, hs := range ls {
		wg.Go(func() {
			if err := hs.Shutdown(ctx); err != nil {
				errs[i] = err
				_ = hs.Close()
			}
		})
	}
	for i, q := range qs {
		wg.Go(func() { errs[len(ls)+i] = q.shutdown(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
