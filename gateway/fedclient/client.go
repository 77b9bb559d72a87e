// Package fedclient is shoal's outbound federation HTTP client: server
// discovery (server-server API, "Resolving server names"), TLS checked
// against the system's or a configured set of roots, refusal of private
// addresses at dial time, and X-Matrix request signing.
package fedclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/eventgraph"
)

// Defaults and bounds of outbound requests. Everything a peer controls is
// bounded: how long it may take, how much it may send back.
const (
	DefaultTimeout   = 30 * time.Second
	dialTimeout      = 10 * time.Second
	handshakeTimeout = 10 * time.Second
	// MaxResponseBytes bounds a response body unless the caller asks for
	// less.
	MaxResponseBytes = 4 << 20
	// maxErrorBody bounds what is read of an error response.
	maxErrorBody = 64 << 10
	// maxDialTargets bounds the addresses tried for one connection (SRV
	// records × resolved addresses).
	maxDialTargets = 16
)

// ErrPrivateAddress is returned when discovery leads to an address that is
// not publicly routable (loopback, private, link-local, unspecified, ...)
// and Config.AllowPrivate is not set.
var ErrPrivateAddress = errors.New("fedclient: refusing to connect to a non-public address")

// Config configures a Client.
type Config struct {
	// Identity signs requests (X-Matrix); unsigned requests (keys,
	// version) work without it.
	Identity *actors.ServerIdentity
	// RootCAs are the certificate authorities trusted for peers; nil uses
	// the system's roots (on Linux, Go's crypto/x509 honours the
	// SSL_CERT_FILE and SSL_CERT_DIR environment variables).
	RootCAs *x509.CertPool
	// AllowPrivate permits connecting to loopback, private, link-local and
	// unspecified addresses. Only tests and closed networks set it.
	AllowPrivate bool
	// Timeout bounds one request, discovery included (zero:
	// DefaultTimeout).
	Timeout time.Duration
	// LookupHost and LookupSRV resolve names (nil: the system resolver).
	// Tests map their made-up server names to loopback with them.
	LookupHost func(ctx context.Context, host string) ([]string, error)
	LookupSRV  func(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
	// WellKnownPort is the port /.well-known/matrix/server is fetched from
	// (zero: 443, as the spec says; tests use their listener's).
	WellKnownPort int
	Now           func() time.Time
	Log           *slog.Logger
}

// Client sends requests to other homeservers. It is safe for concurrent use.
type Client struct {
	cfg       Config
	http      *http.Client
	wellKnown *wellKnownCache
	tlsConf   *tls.Config
}

// New builds a Client.
func New(cfg Config) *Client {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.LookupHost == nil {
		cfg.LookupHost = net.DefaultResolver.LookupHost
	}
	if cfg.LookupSRV == nil {
		cfg.LookupSRV = net.DefaultResolver.LookupSRV
	}
	if cfg.WellKnownPort == 0 {
		cfg.WellKnownPort = 443
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	c := &Client{cfg: cfg}
	c.tlsConf = &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12}
	tr := &http.Transport{
		DialTLSContext:         c.dialTLS,
		ForceAttemptHTTP2:      true,
		MaxIdleConnsPerHost:    8,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
	c.http = &http.Client{
		Transport: tr,
		// Federation endpoints do not redirect; following one could lead
		// anywhere with our signature attached.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	c.wellKnown = newWellKnownCache(c)
	return c
}

// Close drops idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// HTTPError is a non-2xx answer of a remote server.
type HTTPError struct {
	Status  int
	ErrCode string
	Message string
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("fedclient: remote answered %d %s: %s", e.Status, e.ErrCode, e.Message)
}

// Request is one federation request.
type Request struct {
	Method      string
	Destination string
	// URI is the path and query, starting with /_matrix/; it is signed as
	// given and sent as given.
	URI string
	// Content is the JSON body (nil: none).
	Content []byte
	// Signed adds the X-Matrix Authorization header.
	Signed bool
	// Limit bounds the response body (zero: MaxResponseBytes).
	Limit int64
	// Timeout bounds this request instead of the client's Timeout (zero:
	// the client's): a send_join to a large room's server may take minutes.
	Timeout time.Duration
}

// Do sends req and returns the body of a 2xx response, at most req.Limit
// bytes. Other statuses are *HTTPError.
func (c *Client) Do(ctx context.Context, req Request) ([]byte, error) {
	resp, err := c.Stream(ctx, req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			return nil, fmt.Errorf("fedclient: response of %s exceeds %d bytes: %w", req.Destination, limitOf(req), err)
		}
		return nil, fmt.Errorf("fedclient: read response of %s: %w", req.Destination, err)
	}
	return out, nil
}

// urlHost is the host part of the URL of requests to serverName: it names
// the connection pool only (the real address comes from discovery at dial
// time). A name without a port gets port 0 so that "example.org" and
// "example.org:443", which are discovered differently, never share
// connections.
func urlHost(serverName string) string {
	if _, port, _ := eventgraph.ParseServerName(serverName); port == 0 {
		return serverName + ":0"
	}
	return serverName
}

// serverNameOf inverts urlHost.
func serverNameOf(addr string) string {
	if s, ok := strings.CutSuffix(addr, ":0"); ok {
		return s
	}
	return addr
}

// hostHeader is the Host header for requests to serverName: the server name
// itself, or the delegated server name from /.well-known.
func (c *Client) hostHeader(ctx context.Context, serverName string) (string, error) {
	host, port, err := eventgraph.ParseServerName(serverName)
	if err != nil {
		return "", err
	}
	if port != 0 || isIPLiteral(host) {
		return serverName, nil
	}
	if d, ok := c.wellKnown.lookup(ctx, host); ok {
		dh, dp, _ := eventgraph.ParseServerName(d)
		if dp != 0 || isIPLiteral(dh) {
			return d, nil
		}
		return dh, nil
	}
	return serverName, nil
}

// target is where discovery says to connect.
type target struct {
	addrs   []string // host:port, hosts resolved at dial time
	tlsName string   // the name the certificate must be valid for (and SNI unless an IP)
}

// resolve runs server discovery for serverName.
func (c *Client) resolve(ctx context.Context, serverName string) (target, error) {
	host, port, err := eventgraph.ParseServerName(serverName)
	if err != nil {
		return target{}, err
	}
	if isIPLiteral(host) {
		return target{addrs: []string{joinHostPort(host, port)}, tlsName: unbracket(host)}, nil
	}
	if port != 0 {
		return target{addrs: []string{joinHostPort(host, port)}, tlsName: host}, nil
	}
	if d, ok := c.wellKnown.lookup(ctx, host); ok {
		dh, dp, _ := eventgraph.ParseServerName(d)
		if isIPLiteral(dh) {
			return target{addrs: []string{joinHostPort(dh, dp)}, tlsName: unbracket(dh)}, nil
		}
		if dp != 0 {
			return target{addrs: []string{joinHostPort(dh, dp)}, tlsName: dh}, nil
		}
		return c.srvTarget(ctx, dh), nil
	}
	return c.srvTarget(ctx, host), nil
}

// srvTarget looks up _matrix-fed._tcp.<host>, then the deprecated
// _matrix._tcp.<host>, else port 8448. The certificate must be valid for
// host whatever the SRV records name.
func (c *Client) srvTarget(ctx context.Context, host string) target {
	t := target{tlsName: host}
	for _, service := range []string{"matrix-fed", "matrix"} {
		_, srvs, err := c.cfg.LookupSRV(ctx, service, "tcp", host)
		if err != nil || len(srvs) == 0 {
			continue
		}
		for _, s := range srvs {
			name := strings.TrimSuffix(s.Target, ".")
			if name == "" || s.Port == 0 {
				continue // "." means "no service here"
			}
			t.addrs = append(t.addrs, net.JoinHostPort(name, strconv.Itoa(int(s.Port))))
			if len(t.addrs) == maxDialTargets {
				break
			}
		}
		if len(t.addrs) > 0 {
			return t
		}
	}
	t.addrs = []string{net.JoinHostPort(host, "8448")}
	return t
}

// dialTLS is the transport's dialer: discovery, then TCP to the first
// reachable allowed address, then TLS for the expected name.
func (c *Client) dialTLS(ctx context.Context, network, addr string) (net.Conn, error) {
	t, err := c.resolve(ctx, serverNameOf(addr))
	if err != nil {
		return nil, err
	}
	raw, err := c.dialAny(ctx, t.addrs)
	if err != nil {
		return nil, err
	}
	conf := c.tlsConf.Clone()
	conf.ServerName = t.tlsName // an IP is verified against the IP SANs and not sent as SNI
	conf.NextProtos = []string{"h2", "http/1.1"}
	tc := tls.Client(raw, conf)
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("fedclient: TLS with %s: %w", t.tlsName, err)
	}
	return tc, nil
}

// dialAny resolves each host:port and connects to the first address that
// answers, refusing non-public addresses unless allowed.
func (c *Client) dialAny(ctx context.Context, addrs []string) (net.Conn, error) {
	d := &net.Dialer{Timeout: dialTimeout, Control: c.control}
	var errs []error
	tried := 0
	for _, hp := range addrs {
		host, port, err := net.SplitHostPort(hp)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ips := []string{host}
		if _, err := netip.ParseAddr(host); err != nil {
			ips, err = c.cfg.LookupHost(ctx, host)
			if err != nil {
				errs = append(errs, err)
				continue
			}
		}
		for _, ip := range ips {
			if tried == maxDialTargets {
				break
			}
			tried++
			conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip, port))
			if err == nil {
				return conn, nil
			}
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("fedclient: no address to connect to")
	}
	return nil, errors.Join(errs...)
}

// control runs just before each connect, on the address really connected
// to, so no DNS answer can steer a connection to a refused address.
func (c *Client) control(network, address string, _ syscall.RawConn) error {
	if c.cfg.AllowPrivate {
		return nil
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %q", ErrPrivateAddress, address)
	}
	if !PublicAddr(ap.Addr()) {
		return fmt.Errorf("%w: %s", ErrPrivateAddress, ap.Addr())
	}
	return nil
}

// nonPublic are the ranges refused besides those netip classifies.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, broadcast
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
	netip.MustParsePrefix("100::/64"),        // discard-only
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
}

// PublicAddr reports whether a is a publicly routable unicast address.
func PublicAddr(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.IsUnspecified() || a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() ||
		a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() || a.IsMulticast() {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

func isIPLiteral(host string) bool {
	_, err := netip.ParseAddr(unbracket(host))
	return err == nil
}

func unbracket(host string) string {
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

// joinHostPort joins a host (IPv6 literals keep or get their brackets) and
// a port, 8448 when port is 0.
func joinHostPort(host string, port int) string {
	if port == 0 {
		port = 8448
	}
	return net.JoinHostPort(unbracket(host), strconv.Itoa(port))
}
