package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Listener defaults.
const (
	// DefaultReadHeaderTimeout cuts off clients that send their request
	// headers slowly (slowloris); it bounds TLS and QUIC handshakes too.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultIdleTimeout closes keep-alive connections with no request.
	DefaultIdleTimeout = 120 * time.Second
	// DefaultMaxHeaderBytes bounds request headers (431 beyond).
	DefaultMaxHeaderBytes = 64 << 10
	// DefaultMaxBodyBytes bounds request bodies (413 M_TOO_LARGE beyond);
	// JSON bodies are bounded by maxBodyBytes as well.
	DefaultMaxBodyBytes = maxBodyBytes
	// altSvcMaxAge is how long clients may remember the HTTP/3 endpoint.
	altSvcMaxAge = 24 * time.Hour
)

func (c *Config) applyListenerDefaults() {
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
}

// TLSOptions describe one HTTPS listener.
type TLSOptions struct {
	// AltSvc is advertised on every response: AltSvcFor(port) when HTTP/3
	// is served on the same port (ServeQUIC).
	AltSvc string
	// FederationOnly serves the federation API (/_matrix/federation,
	// /_matrix/key, /.well-known/matrix/server) and nothing else.
	FederationOnly bool
}

// AltSvcFor is the Alt-Svc header value that sends clients to HTTP/3 on
// port.
func AltSvcFor(port int) string {
	return fmt.Sprintf(`h3=":%d"; ma=%d`, port, int(altSvcMaxAge.Seconds()))
}

func withAltSvc(h http.Handler, altSvc string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Alt-Svc", altSvc)
		h.ServeHTTP(w, r)
	})
}

// handlerFor is the handler of a listener: everything, or only the
// federation API (behind the same middleware, so refusals are counted and
// logged like any request).
func (s *Server) handlerFor(federationOnly bool) http.Handler {
	if !federationOnly {
		return s.handler
	}
	return s.middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if strings.HasPrefix(p, "/_matrix/federation/") || strings.HasPrefix(p, "/_matrix/key/") ||
			p == "/.well-known/matrix/server" {
			s.mux.ServeHTTP(w, r)
			return
		}
		writeError(w, r, errStatus(http.StatusNotFound, "M_UNRECOGNIZED", "this listener serves the federation API only"))
	}))
}

// quicListener is one HTTP/3 server and the UDP socket it owns.
type quicListener struct {
	srv  *http3.Server
	conn net.PacketConn
}

// shutdown sends GOAWAY, waits (bounded by ctx) for requests in flight —
// long-polls end at once since Shutdown cancelled stopCtx — then closes
// the socket, which http3.Server leaves to its owner.
func (q *quicListener) shutdown(ctx context.Context) error {
	err := q.srv.Shutdown(ctx)
	if cerr := q.conn.Close(); err == nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("gateway: stop HTTP/3 on %s: %w", q.conn.LocalAddr(), err)
	}
	return nil
}

// ServeQUIC serves HTTP/3 on conn until Shutdown, with the limits of the
// TCP listeners: handshakes bounded like request headers, the same idle
// timeout and header limit, and at most 100 concurrent streams (requests)
// per connection.
func (s *Server) ServeQUIC(conn net.PacketConn, tlsConf *tls.Config, federationOnly bool) error {
	srv := &http3.Server{
		Handler:   s.handlerFor(federationOnly),
		TLSConfig: tlsConf.Clone(),
		QUICConfig: &quic.Config{
			HandshakeIdleTimeout: s.cfg.ReadHeaderTimeout,
			MaxIdleTimeout:       s.cfg.IdleTimeout,
			MaxIncomingStreams:   100,
		},
		MaxHeaderBytes: s.cfg.MaxHeaderBytes,
		IdleTimeout:    s.cfg.IdleTimeout,
		Logger:         s.log.With(slog.String("component", "http3")),
	}
	s.mu.Lock()
	if s.stopCtx.Err() != nil {
		s.mu.Unlock()
		return conn.Close()
	}
	s.quic = append(s.quic, &quicListener{srv: srv, conn: conn})
	s.mu.Unlock()
	if err := srv.Serve(conn); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("gateway: serve HTTP/3 %s: %w", conn.LocalAddr(), err)
	}
	return nil
}

// ServeAdmin serves the admin API (metrics and pprof) on ln until Shutdown.
func (s *Server) ServeAdmin(ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.adminHandler(),
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.track(hs)
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("gateway: serve admin %s: %w", ln.Addr(), err)
	}
	return nil
}

// listenTLSPair binds addr over TCP (HTTPS) and the same port over UDP
// (HTTP/3). For port 0 it retries when the kernel's TCP pick is taken for
// UDP.
func listenTLSPair(addr string) (net.Listener, net.PacketConn, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway: listen %s: %w", addr, err)
	}
	for attempt := 0; ; attempt++ {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: listen %s: %w", addr, err)
		}
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err == nil {
			return ln, pc, nil
		}
		ln.Close()
		if port != "0" || attempt == 9 {
			return nil, nil, fmt.Errorf("gateway: listen %s (UDP, for HTTP/3): %w", addr, err)
		}
	}
}

func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// corsMethods is Access-Control-Allow-Methods.
const corsMethods = "GET, HEAD, POST, PUT, DELETE, OPTIONS"

// knownMethods keeps the metrics' method label bounded whatever clients send.
var knownMethods = map[string]bool{http.MethodGet: true, http.MethodHead: true, http.MethodPost: true,
	http.MethodPut: true, http.MethodPatch: true, http.MethodDelete: true, http.MethodOptions: true}

// logRequest records one answered request in the metrics and the access
// log. Routes are patterns, never raw paths: paths carry IDs.
func (s *Server) logRequest(r *http.Request, rec *statusRecorder, st *reqState, took time.Duration) {
	route := r.Pattern
	if route == "" {
		// Refused before routing (preflight, limits): name the route it
		// would have reached.
		_, route = s.mux.Handler(r)
	}
	method := r.Method
	if !knownMethods[method] {
		method = "OTHER"
	}
	s.metrics.observeRequest(route, method, rec.status, took)
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "request",
		slog.String("method", r.Method), slog.String("route", route), slog.String("path", r.URL.Path),
		slog.Int("status", rec.status), slog.Int64("bytes", rec.bytes), slog.Duration("took", took),
		slog.String("proto", r.Proto), slog.String("client", clientIP(r)), slog.String("user", st.user))
}
