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
	// Terms are the policies users must accept at registration (MSC1692);
	// empty means no m.login.terms stage.
	Terms map[string]TermsPolicy
	// PublicBaseURL is advertised in /.well-known/matrix/client.
	PublicBaseURL string
	// WellKnownServer is advertised in /.well-known/matrix/server (delegation).
	WellKnownServer string
	// RateLimit enables per-user and per-IP rate limits.
	RateLimit bool
	// PasswordHashCost is the bcrypt cost of new password hashes (zero:
	// actors.DefaultPasswordCost). Only tests lower it: under the race
	// detector one default-cost hash takes about a second here.
	PasswordHashCost int
	Log              *slog.Logger
	Now              func() time.Time
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

	// uia holds user-interactive auth sessions (short-lived, node-local:
	// a client completes a UIA flow against the node it started it on).
	uia *uiaSessions

	fallbacks map[string]bool

	// lastCreateTS makes create events' timestamps unique (see createTS).
	lastCreateTS atomic.Int64

	// stopCtx is cancelled when shutdown begins, so long-polls return at
	// once instead of holding the drain up.
	stopCtx context.Context
	stopAll context.CancelFunc

	mu        sync.Mutex
	listeners []*http.Server
}

// New builds the gateway for router and the server identity.
func New(cfg Config, router actors.Router, server *actors.ServerIdentity) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, router: router, server: server, log: cfg.Log, mux: http.NewServeMux(),
		uia: newUIASessions(cfg.Now)}
	s.limiter = newRateLimiter(cfg.RateLimit, cfg.Now)
	s.stopCtx, s.stopAll = context.WithCancel(context.Background())
	s.routes()
	s.handler = s.middleware(s.mux)
	return s
}

// Handler is the whole HTTP API as one handler.
func (s *Server) Handler() http.Handler { return s.handler }

// handle registers h for "METHOD /path" and makes other methods on the same
// path answer 405 M_UNRECOGNIZED, as the spec asks.
func (s *Server) handle(pattern string, h http.HandlerFunc) {
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
	s.registerDirectory()
}

// middleware wraps every request: panic recovery, CORS, access log.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
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
			s.log.Debug("request", slog.String("method", r.Method), slog.String("path", r.URL.Path),
				slog.Int("status", rec.status), slog.Duration("took", time.Since(start)))
		}()
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization")
		if r.Method == http.MethodOptions {
			rec.WriteHeader(http.StatusOK)
			return
		}
		next.ServeHTTP(rec, r)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status, s.wrote = code, true
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the real writer (flushing, deadlines).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// newHTTPServer applies the limits every listener shares.
func (s *Server) newHTTPServer(tlsConf *tls.Config) *http.Server {
	return &http.Server{
		Handler:           s.handler,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
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
func (s *Server) ServeTLS(ln net.Listener, tlsConf *tls.Config) error {
	hs := s.newHTTPServer(tlsConf)
	s.track(hs)
	if err := hs.Serve(tls.NewListener(ln, hs.TLSConfig)); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("gateway: serve TLS %s: %w", ln.Addr(), err)
	}
	return nil
}

func (s *Server) track(hs *http.Server) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners = append(s.listeners, hs)
}

// Shutdown stops accepting requests and waits (bounded by ctx) for those
// in flight, long-polls included.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopAll()
	s.mu.Lock()
	ls := append([]*http.Server(nil), s.listeners...)
	s.mu.Unlock()
	var errs []error
	for _, hs := range ls {
		if err := hs.Shutdown(ctx); err != nil {
			errs = append(errs, err)
			_ = hs.Close()
		}
	}
	return errors.Join(errs...)
}
