package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/net/html"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// URL previews (GET /_matrix/client/v1/media/preview_url).
//
// The node fetches a URL a client names, so every connection is checked
// where it is made: the dialer's Control hook sees the address actually
// dialled, after name resolution and for every redirect, and refuses
// non-public addresses unless PreviewConfig.AllowNetworks lists them. A name
// that resolves to a public address first and a private one later (DNS
// rebinding) is refused on the connection that would reach the private one.

// Defaults of PreviewConfig.
const (
	DefaultPreviewMaxBytes      = 1 << 20
	DefaultPreviewTimeout       = 10 * time.Second
	DefaultPreviewMaxImageBytes = 5 << 20
	maxPreviewURL               = 2048
	maxPreviewRedirects         = 5
	maxPreviewField             = 1024
)

// PreviewConfig bounds URL previews.
type PreviewConfig struct {
	// Disabled turns /preview_url off: it answers 403 M_FORBIDDEN.
	Disabled bool
	// AllowNetworks are address ranges previews may reach although they
	// are not public (loopback, private, link-local, ...).
	AllowNetworks []netip.Prefix
	// MaxBytes bounds the page read; MaxImageBytes the og:image stored.
	MaxBytes      int64
	MaxImageBytes int64
	// Timeout bounds each fetch, redirects included.
	Timeout time.Duration
}

func (c PreviewConfig) withDefaults() PreviewConfig {
	if c.MaxBytes <= 0 {
		c.MaxBytes = DefaultPreviewMaxBytes
	}
	if c.MaxImageBytes <= 0 {
		c.MaxImageBytes = DefaultPreviewMaxImageBytes
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultPreviewTimeout
	}
	return c
}

// Address ranges that are not the public internet and that netip's
// predicates do not already name.
var nonPublicPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),          // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),      // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),       // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),       // documentation
	netip.MustParsePrefix("198.18.0.0/15"),      // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"),    // documentation
	netip.MustParsePrefix("203.0.113.0/24"),     // documentation
	netip.MustParsePrefix("240.0.0.0/4"),        // reserved, broadcast
	netip.MustParsePrefix("64:ff9b::/96"),       // NAT64: reaches IPv4 behind it
	netip.MustParsePrefix("64:ff9b:1::/48"),     // local-use NAT64
	netip.MustParsePrefix("100::/64"),           // discard
	netip.MustParsePrefix("2001::/23"),          // IETF protocol assignments (Teredo, ...)
	netip.MustParsePrefix("2001:db8::/32"),      // documentation
	netip.MustParsePrefix("2002::/16"),          // 6to4: embeds any IPv4
	netip.MustParsePrefix("fc00::/7"),           // unique local
	netip.MustParsePrefix("fec0::/10"),          // site-local (deprecated)
	netip.MustParsePrefix("ff00::/8"),           // multicast
	netip.MustParsePrefix("::/128"),             // unspecified
	netip.MustParsePrefix("::1/128"),            // loopback
	netip.MustParsePrefix("::ffff:0:0/96"),      // IPv4-mapped (checked unmapped)
	netip.MustParsePrefix("::/96"),              // IPv4-compatible (deprecated)
	netip.MustParsePrefix("5f00::/16"),          // SRv6 SIDs
	netip.MustParsePrefix("3fff::/20"),          // documentation
	netip.MustParsePrefix("2620:4f:8000::/48"),  // AS112
	netip.MustParsePrefix("192.31.196.0/24"),    // AS112
	netip.MustParsePrefix("192.52.193.0/24"),    // AMT
	netip.MustParsePrefix("192.175.48.0/24"),    // AS112 direct delegation
	netip.MustParsePrefix("255.255.255.255/32"), // limited broadcast
}

// publicAddr reports whether a is on the public internet.
func publicAddr(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return false
	}
	for _, p := range nonPublicPrefixes {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

var errPreviewBlocked = errors.New("preview: address not allowed")

// previewDialControl refuses connections to addresses that are neither
// public nor allowlisted.
func previewDialControl(allow []netip.Prefix) func(network, address string, _ syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return errPreviewBlocked
		}
		a := ap.Addr().Unmap()
		for _, p := range allow {
			if p.Contains(a) {
				return nil
			}
		}
		if !publicAddr(a) {
			return fmt.Errorf("%w: %s", errPreviewBlocked, a)
		}
		return nil
	}
}

func (s *Server) previewClient(c PreviewConfig) *http.Client {
	d := &net.Dialer{Timeout: c.Timeout, Control: previewDialControl(c.AllowNetworks)}
	return &http.Client{
		Timeout: c.Timeout,
		Transport: &http.Transport{
			Proxy:                  nil, // a proxy would dial for us, unchecked
			DialContext:            d.DialContext,
			TLSHandshakeTimeout:    c.Timeout,
			ResponseHeaderTimeout:  c.Timeout,
			MaxResponseHeaderBytes: 64 << 10,
			DisableKeepAlives:      true,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxPreviewRedirects {
				return errors.New("too many redirects")
			}
			if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
				return errors.New("redirect to a non-HTTP URL")
			}
			return nil
		},
	}
}

func (s *Server) handlePreviewURL(w http.ResponseWriter, r *http.Request, sess *Session) {
	c := s.mediaConfig().Preview
	if c.Disabled {
		writeError(w, r, actors.ErrForbidden("URL previews are disabled on this server"))
		return
	}
	if isGuest(sess.UserID) {
		writeError(w, r, errStatus(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "guests cannot preview URLs"))
		return
	}
	raw := r.URL.Query().Get("url")
	u, err := url.Parse(raw)
	if raw == "" || len(raw) > maxPreviewURL || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		writeError(w, r, actors.ErrInvalidParam("url must be an absolute http or https URL of at most %d bytes", maxPreviewURL))
		return
	}
	if ts := r.URL.Query().Get("ts"); ts != "" {
		if _, err := parseInt64(ts); err != nil {
			writeError(w, r, actors.ErrInvalidParam("ts must be an integer"))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), c.Timeout)
	defer cancel()
	client := s.previewClient(c)
	body, ct, err := fetchLimited(ctx, client, u.String(), c.MaxBytes)
	if err != nil {
		s.log.Debug("preview: fetch failed", "url", u.Redacted(), "err", err)
		writeError(w, r, errStatus(http.StatusBadGateway, "M_UNKNOWN", "could not fetch the URL to preview"))
		return
	}
	out := map[string]any{}
	mt, _, _ := mime.ParseMediaType(ct)
	var image string
	switch {
	case mt == "text/html" || mt == "application/xhtml+xml":
		og := parseOpenGraph(body)
		for k, v := range og {
			out[k] = v
		}
		if img, ok := og["og:image"]; ok {
			delete(out, "og:image")
			if iu, err := u.Parse(img); err == nil && (iu.Scheme == "http" || iu.Scheme == "https") {
				image = iu.String()
			}
		}
	case strings.HasPrefix(mt, "image/"):
		image = u.String()
	}
	if image != "" {
		if mxc, size, ctype, ok := s.storePreviewImage(ctx, client, sess, image, c.MaxImageBytes); ok {
			out["og:image"] = mxc
			out["matrix:image:size"] = size
			out["og:image:type"] = ctype
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func parseInt64(v string) (int64, error) {
	var n int64
	_, err := fmt.Sscan(v, &n)
	return n, err
}

// fetchLimited GETs target and reads at most limit bytes of a 200 answer.
func fetchLimited(ctx context.Context, client *http.Client, target string, limit int64) ([]byte, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("User-Agent", "shoal URL preview")
	req.Header.Set("Accept", "text/html, application/xhtml+xml, image/*;q=0.8")
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, "", err
	}
	return body, resp.Header.Get("Content-Type"), nil
}

// storePreviewImage fetches an image (at most limit bytes, streamed to a
// staged file) and stores it as media of the requesting user, charged to
// their quota. Any failure just leaves the image out of the preview.
func (s *Server) storePreviewImage(ctx context.Context, client *http.Client, sess *Session, target string, limit int64) (mxc string, size int64, ctype string, ok bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return "", 0, "", false
	}
	req.Header.Set("User-Agent", "shoal URL preview")
	resp, err := client.Do(req)
	if err != nil {
		return "", 0, "", false
	}
	defer resp.Body.Close()
	ctype = resp.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ctype); resp.StatusCode != http.StatusOK || err != nil || !strings.HasPrefix(mt, "image/") {
		return "", 0, "", false
	}
	lim := s.mediaLimits()
	lim.MaxUpload = min(lim.MaxUpload, limit)
	if resp.ContentLength > lim.MaxUpload {
		return "", 0, "", false
	}
	owner := s.mediaOwnerKey(sess.UserID)
	res, err := s.router.Request(ctx, &pb.MediaBegin{Server: s.cfg.ServerName, OwnerKey: owner, UserId: sess.UserID,
		SizeHint: resp.ContentLength, Limits: lim})
	begin, isBegin := res.(*pb.MediaBeginReply)
	if err != nil || !isBegin {
		return "", 0, "", false
	}
	staged, err := stageUpload(begin.StagingDir, resp.Body, lim.MaxUpload)
	if err != nil {
		return "", 0, "", false
	}
	if fi, err := os.Stat(staged); err == nil {
		size = fi.Size()
	}
	res, err = s.router.Request(ctx, &pb.MediaCommit{Server: s.cfg.ServerName, OwnerKey: owner, UserId: sess.UserID,
		StagedPath: staged, ContentType: ctype, Limits: lim})
	commit, isCommit := res.(*pb.MediaCommitReply)
	if err != nil || !isCommit {
		return "", 0, "", false
	}
	return "mxc://" + s.cfg.ServerName + "/" + commit.MediaId, size, ctype, true
}

// parseOpenGraph reads the og: properties of an HTML page, falling back on
// <title> and <meta name="description"> for og:title and og:description.
// Values are bounded; only the first of each property counts.
func parseOpenGraph(body []byte) map[string]string {
	og := map[string]string{}
	var title, description string
	z := html.NewTokenizer(bytes.NewReader(body))
	inTitle := false
	for {
		switch z.Next() {
		case html.ErrorToken:
			if _, ok := og["og:title"]; !ok && title != "" {
				og["og:title"] = title
			}
			if _, ok := og["og:description"]; !ok && description != "" {
				og["og:description"] = description
			}
			return og
		case html.StartTagToken, html.SelfClosingTagToken:
			name, hasAttr := z.TagName()
			switch string(name) {
			case "title":
				inTitle = title == ""
			case "meta":
				var prop, content, metaName string
				for hasAttr {
					var k, v []byte
					k, v, hasAttr = z.TagAttr()
					switch strings.ToLower(string(k)) {
					case "property":
						prop = strings.ToLower(string(v))
					case "name":
						metaName = strings.ToLower(string(v))
					case "content":
						content = string(v)
					}
				}
				if prop == "" && strings.HasPrefix(metaName, "og:") {
					prop = metaName
				}
				content = bound(strings.TrimSpace(content))
				switch {
				case strings.HasPrefix(prop, "og:") && len(og) < 32:
					if _, dup := og[prop]; !dup && content != "" {
						og[prop] = content
					}
				case metaName == "description" && description == "":
					description = content
				}
			}
		case html.TextToken:
			if inTitle {
				title = bound(strings.TrimSpace(string(z.Text())))
				inTitle = false
			}
		case html.EndTagToken:
			inTitle = false
		}
	}
}

func bound(v string) string {
	if len(v) <= maxPreviewField {
		return v
	}
	v = v[:maxPreviewField]
	for len(v) > 0 && !utf8.ValidString(v) {
		v = v[:len(v)-1]
	}
	return v
}
