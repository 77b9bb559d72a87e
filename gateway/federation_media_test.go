package gateway_test

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"image"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/fedclient"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// fedMediaGet sends a GET signed by the fake peer p to node's TLS
// listener and returns the raw response.
func fedMediaGet(t *testing.T, fed *shoaltest.Federation, node *shoaltest.Node, p *fakePeer, uri string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+node.TLSAddrs[0]+uri, nil)
	if p != nil {
		auth, err := fedclient.SignRequest(p.id, http.MethodGet, uri, node.ServerName(), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", auth)
	}
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fed.CA.Pool(), ServerName: node.ServerName()}}, Timeout: 30 * time.Second}
	defer cli.CloseIdleConnections()
	resp, err := cli.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// parseFedMedia checks a federation media answer: multipart/mixed, a JSON
// object first, then the media; it returns the media part's headers and
// bytes.
func parseFedMedia(t *testing.T, resp *http.Response, body []byte) (http.Header, []byte) {
	t.Helper()
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusOK || err != nil || mt != "multipart/mixed" || params["boundary"] == "" {
		t.Fatalf("federation media: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	meta, err := mr.NextPart()
	if err != nil {
		t.Fatalf("metadata part: %v", err)
	}
	raw, _ := io.ReadAll(meta)
	var obj map[string]any
	if meta.Header.Get("Content-Type") != "application/json" || json.Unmarshal(raw, &obj) != nil || obj == nil {
		t.Fatalf("metadata part %q: %s", meta.Header.Get("Content-Type"), raw)
	}
	part, err := mr.NextPart()
	if err != nil {
		t.Fatalf("media part: %v", err)
	}
	data, err := io.ReadAll(part)
	if err != nil {
		t.Fatalf("media part: %v", err)
	}
	if _, err := mr.NextPart(); err != io.EOF {
		t.Fatalf("more than two parts (or no closing boundary): %v", err)
	}
	return http.Header(part.Header), data
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// Another server downloads this server's media and thumbnails with signed
// requests and gets them as multipart/mixed; unsigned requests and unknown
// media are refused.
func TestFederationMediaServed(t *testing.T) {
	fed, a, _ := twoNodes(t)
	peer := startFakePeer(t, fed, "peer.test")
	alice := a.Register("alice")
	data := randomBytes(t, 300<<10) // more than one 256 KiB chunk
	mxc := upload(t, alice, data, "application/pdf", "report.pdf")

	resp, body := fedMediaGet(t, fed, a, peer, "/_matrix/federation/v1/media/download/"+mxc.FileID)
	hdr, got := parseFedMedia(t, resp, body)
	if !bytes.Equal(got, data) {
		t.Fatalf("federation download: %d bytes, want %d identical", len(got), len(data))
	}
	if hdr.Get("Content-Type") != "application/pdf" || !strings.Contains(hdr.Get("Content-Disposition"), "report.pdf") ||
		!strings.HasPrefix(hdr.Get("Content-Disposition"), "attachment") {
		t.Fatalf("media part headers %v", hdr)
	}

	img := encodePNG(t, 800, 600, false)
	imgMXC := upload(t, alice, img, "image/png", "pic.png")
	resp, body = fedMediaGet(t, fed, a, peer, "/_matrix/federation/v1/media/thumbnail/"+imgMXC.FileID+"?width=64&height=64&method=crop")
	hdr, got = parseFedMedia(t, resp, body)
	cfg, format, err := image.DecodeConfig(bytes.NewReader(got))
	if err != nil || hdr.Get("Content-Type") != "image/"+format || cfg.Width != 96 || cfg.Height != 96 {
		t.Fatalf("federation thumbnail: %v %s %+v %v", hdr, format, cfg, err)
	}

	resp, body = fedMediaGet(t, fed, a, nil, "/_matrix/federation/v1/media/download/"+mxc.FileID)
	wantErr(t, resp, body, http.StatusUnauthorized, "M_UNAUTHORIZED")
	resp, body = fedMediaGet(t, fed, a, peer, "/_matrix/federation/v1/media/download/"+strings.Repeat("x", len(mxc.FileID)))
	wantErr(t, resp, body, http.StatusNotFound, "M_NOT_FOUND")
	resp, body = fedMediaGet(t, fed, a, peer, "/_matrix/federation/v1/media/download/nope")
	wantErr(t, resp, body, http.StatusNotFound, "M_NOT_FOUND")
	resp, body = fedMediaGet(t, fed, a, peer, "/_matrix/federation/v1/media/thumbnail/"+imgMXC.FileID+"?width=0&height=64")
	wantErr(t, resp, body, http.StatusBadRequest, "M_INVALID_PARAM")
}

// Bob on b.test downloads alice's upload on a.test through his own server:
// the bytes arrive identical with their type and name, and once kept they
// are served with a.test stopped; thumbnails too. Unknown media is 404, an
// unreachable server 502.
func TestFederationMediaRemoteDownload(t *testing.T) {
	_, a, b := twoNodes(t)
	alice := a.Register("alice")
	bob := b.Register("bob")
	data := randomBytes(t, 300<<10)
	mxc := upload(t, alice, data, "text/plain; charset=utf-8", "notes.txt")
	img := encodePNG(t, 800, 600, false)
	imgMXC := upload(t, alice, img, "image/png", "pic.png")

	resp, got := mediaReq(t, b, bob.AccessToken, "GET", downloadPath(mxc), nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) {
		t.Fatalf("remote download: %d, %d bytes (want %d identical)", resp.StatusCode, len(got), len(data))
	}
	if resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" || !strings.Contains(resp.Header.Get("Content-Disposition"), "notes.txt") {
		t.Fatalf("remote download headers: %v", resp.Header)
	}
	// With a file name in the path, as for local media.
	resp, got = mediaReq(t, b, bob.AccessToken, "GET", downloadPath(mxc)+"/other.txt", nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) || !strings.Contains(resp.Header.Get("Content-Disposition"), "other.txt") {
		t.Fatalf("remote download with a name: %d %v", resp.StatusCode, resp.Header)
	}
	resp, thumb := thumbnail(t, b, bob.AccessToken, imgMXC, 64, 64, "crop")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("remote thumbnail: %d %s", resp.StatusCode, thumb)
	}
	if cfg, _, err := image.DecodeConfig(bytes.NewReader(thumb)); err != nil || cfg.Width != 96 || cfg.Height != 96 {
		t.Fatalf("remote thumbnail: %+v %v", cfg, err)
	}
	missing := id.ContentURI{Homeserver: "a.test", FileID: strings.Repeat("Q", len(mxc.FileID))}
	resp, body := mediaReq(t, b, bob.AccessToken, "GET", downloadPath(missing), nil, nil)
	wantErr(t, resp, body, http.StatusNotFound, "M_NOT_FOUND")
	resp, body = mediaReq(t, b, bob.AccessToken, "GET", downloadPath(id.ContentURI{Homeserver: "a.test", FileID: "bad!id"}), nil, nil)
	wantErr(t, resp, body, http.StatusNotFound, "M_NOT_FOUND")
	resp, body = mediaReq(t, b, bob.AccessToken, "GET", downloadPath(id.ContentURI{Homeserver: "nowhere.test", FileID: "abc"}), nil, nil)
	wantErr(t, resp, body, http.StatusBadGateway, "M_UNKNOWN")
	resp, body = mediaReq(t, b, "", "GET", downloadPath(mxc), nil, nil)
	wantErr(t, resp, body, http.StatusUnauthorized, "M_MISSING_TOKEN")

	// a.test goes away: b.test serves what it keeps, and only that.
	a.Stop()
	resp, got = mediaReq(t, b, bob.AccessToken, "GET", downloadPath(mxc), nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("cached download: %d, %d bytes", resp.StatusCode, len(got))
	}
	// Another size rounding to the same preset is the kept thumbnail.
	resp, again := thumbnail(t, b, bob.AccessToken, imgMXC, 90, 90, "crop")
	if resp.StatusCode != http.StatusOK || !bytes.Equal(again, thumb) {
		t.Fatalf("cached thumbnail: %d", resp.StatusCode)
	}
	resp, body = mediaReq(t, b, bob.AccessToken, "GET", downloadPath(imgMXC), nil, nil)
	wantErr(t, resp, body, http.StatusBadGateway, "M_UNKNOWN")
}

// Remote media larger than this server's upload limit is refused with 502
// M_TOO_LARGE and not kept.
func TestFederationMediaRemoteTooLarge(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	b := fed.Start(t, "b.test", withMedia(func(c *gateway.MediaConfig) { c.MaxUploadBytes = 1000 }))
	mxc := upload(t, a.Register("alice"), randomBytes(t, 5000), "application/octet-stream", "")
	resp, body := mediaReq(t, b, b.Register("bob").AccessToken, "GET", downloadPath(mxc), nil, nil)
	wantErr(t, resp, body, http.StatusBadGateway, "M_TOO_LARGE")
}

// A server without the federation media endpoints (404 M_UNRECOGNIZED) is
// asked on its legacy unauthenticated endpoint, with allow_remote=false.
func TestFederationMediaLegacyFallback(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	b := fed.Start(t, "b.test")
	data := randomBytes(t, 10<<10)
	var legacyHits, fedHits atomic.Int32
	startMediaPeer(t, fed, "old.test", func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/media/"):
			fedHits.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`)
		case r.URL.Path == "/_matrix/media/v3/download/old.test/oldmedia" && r.URL.Query().Get("allow_remote") == "false":
			legacyHits.Add(1)
			w.Header().Set("Content-Type", "image/gif")
			w.Header().Set("Content-Disposition", `inline; filename="old.gif"`)
			_, _ = w.Write(data)
		default:
			http.Error(w, `{"errcode":"M_NOT_FOUND","error":"no"}`, http.StatusNotFound)
		}
	})

	bob := b.Register("bob")
	mxc := id.ContentURI{Homeserver: "old.test", FileID: "oldmedia"}
	resp, got := mediaReq(t, b, bob.AccessToken, "GET", downloadPath(mxc), nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) || resp.Header.Get("Content-Type") != "image/gif" ||
		!strings.Contains(resp.Header.Get("Content-Disposition"), "old.gif") {
		t.Fatalf("legacy fallback: %d %v", resp.StatusCode, resp.Header)
	}
	if fedHits.Load() != 1 || legacyHits.Load() != 1 {
		t.Fatalf("hits: federation %d, legacy %d", fedHits.Load(), legacyHits.Load())
	}
	// Kept: no new request.
	resp, got = mediaReq(t, b, bob.AccessToken, "GET", downloadPath(mxc), nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) || fedHits.Load() != 1 || legacyHits.Load() != 1 {
		t.Fatalf("second download: %d, hits %d/%d", resp.StatusCode, fedHits.Load(), legacyHits.Load())
	}
	resp, body := mediaReq(t, b, bob.AccessToken, "GET", downloadPath(id.ContentURI{Homeserver: "old.test", FileID: "other"}), nil, nil)
	wantErr(t, resp, body, http.StatusNotFound, "M_NOT_FOUND")
}

// startMediaPeer runs a server named name on the federation that answers
// federation media requests with h.
func startMediaPeer(t *testing.T, fed *shoaltest.Federation, name string, h http.HandlerFunc) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	certFile, keyFile := fed.CA.Issue(t, t.TempDir(), name)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	n, _ := strconv.Atoi(port)
	fed.Add(name, n)
}

// A remote answering with a Location part has the media fetched from there
// (through the URL-preview client's address policy) and kept; a Location
// the policy refuses is 502.
func TestFederationMediaLocationPart(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	data := randomBytes(t, 20<<10)
	var blobHits atomic.Int32
	blob := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		blobHits.Add(1)
		w.Header().Set("Content-Type", "audio/ogg")
		w.Header().Set("Content-Disposition", `attachment; filename="song.ogg"`)
		_, _ = w.Write(data)
	}))
	t.Cleanup(blob.Close)
	startMediaPeer(t, fed, "cdn.test", func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/media/download/") || r.Header.Get("Authorization") == "" {
			http.Error(w, `{"errcode":"M_NOT_FOUND","error":"no"}`, http.StatusNotFound)
			return
		}
		mw := multipart.NewWriter(w)
		w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
		meta, _ := mw.CreatePart(map[string][]string{"Content-Type": {"application/json"}})
		_, _ = io.WriteString(meta, `{}`)
		_, _ = mw.CreatePart(map[string][]string{"Location": {blob.URL + "/blob"}})
		_ = mw.Close()
	})
	allowed := fed.Start(t, "b.test", withMedia(func(c *gateway.MediaConfig) {
		c.Preview.AllowNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}))
	strict := fed.Start(t, "c.test")
	mxc := id.ContentURI{Homeserver: "cdn.test", FileID: "song"}

	bob := allowed.Register("bob")
	resp, got := mediaReq(t, allowed, bob.AccessToken, "GET", downloadPath(mxc), nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) || resp.Header.Get("Content-Type") != "audio/ogg" ||
		!strings.Contains(resp.Header.Get("Content-Disposition"), "song.ogg") {
		t.Fatalf("download through Location: %d %v", resp.StatusCode, resp.Header)
	}
	resp, got = mediaReq(t, allowed, bob.AccessToken, "GET", downloadPath(mxc), nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) || blobHits.Load() != 1 {
		t.Fatalf("kept: %d, %d fetches", resp.StatusCode, blobHits.Load())
	}
	resp, body := mediaReq(t, strict, strict.Register("carol").AccessToken, "GET", downloadPath(mxc), nil, nil)
	wantErr(t, resp, body, http.StatusBadGateway, "M_UNKNOWN")
	if blobHits.Load() != 1 {
		t.Fatalf("a loopback Location was fetched without being allowed")
	}
}

// Answers that are not the two-part multipart the spec asks for are 502,
// and a remote's "not yet uploaded" stays 504 M_NOT_YET_UPLOADED.
func TestFederationMediaBadAnswers(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	startMediaPeer(t, fed, "odd.test", func(w http.ResponseWriter, r *http.Request) {
		switch strings.TrimPrefix(r.URL.Path, "/_matrix/federation/v1/media/download/") {
		case "json":
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{}`)
		case "onepart":
			mw := multipart.NewWriter(w)
			w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
			meta, _ := mw.CreatePart(map[string][]string{"Content-Type": {"application/json"}})
			_, _ = io.WriteString(meta, `{}`)
			_ = mw.Close()
		case "badmeta":
			mw := multipart.NewWriter(w)
			w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
			meta, _ := mw.CreatePart(map[string][]string{"Content-Type": {"application/json"}})
			_, _ = io.WriteString(meta, `[1,2]`)
			part, _ := mw.CreatePart(map[string][]string{"Content-Type": {"text/plain"}})
			_, _ = io.WriteString(part, "data")
			_ = mw.Close()
		case "pending":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusGatewayTimeout)
			_, _ = io.WriteString(w, `{"errcode":"M_NOT_YET_UPLOADED","error":"later"}`)
		default:
			http.Error(w, `{"errcode":"M_NOT_FOUND","error":"no"}`, http.StatusNotFound)
		}
	})
	b := fed.Start(t, "b.test")
	tok := b.Register("bob").AccessToken
	for _, m := range []string{"json", "onepart", "badmeta"} {
		resp, body := mediaReq(t, b, tok, "GET", downloadPath(id.ContentURI{Homeserver: "odd.test", FileID: m}), nil, nil)
		wantErr(t, resp, body, http.StatusBadGateway, "M_UNKNOWN")
	}
	resp, body := mediaReq(t, b, tok, "GET", downloadPath(id.ContentURI{Homeserver: "odd.test", FileID: "pending"}), nil, nil)
	wantErr(t, resp, body, http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED")
	resp, body = mediaReq(t, b, tok, "GET", downloadPath(id.ContentURI{Homeserver: "odd.test", FileID: "pending"})+"?timeout_ms=abc", nil, nil)
	wantErr(t, resp, body, http.StatusBadRequest, "M_INVALID_PARAM")
}
