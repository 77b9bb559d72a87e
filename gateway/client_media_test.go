package gateway_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"

	_ "golang.org/x/image/webp"
)

// mediaReq makes a raw request and returns the response (body read).
func mediaReq(t testing.TB, node *shoaltest.Node, token, method, path string, body io.Reader, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, node.BaseURL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, data
}

// wantErr checks a Matrix error response.
func wantErr(t testing.TB, resp *http.Response, body []byte, status int, errcode string) {
	t.Helper()
	var e struct {
		ErrCode string `json:"errcode"`
	}
	_ = json.Unmarshal(body, &e)
	if resp.StatusCode != status || e.ErrCode != errcode {
		t.Fatalf("%s %s: got %d %s, want %d %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, body, status, errcode)
	}
}

func withMedia(f func(*gateway.MediaConfig)) shoaltest.Option {
	return func(cfg *gateway.NodeConfig) { f(&cfg.Gateway.Media) }
}

func upload(t testing.TB, cli *mautrix.Client, data []byte, contentType, name string) id.ContentURI {
	t.Helper()
	res, err := cli.UploadMedia(context.Background(), mautrix.ReqUploadMedia{ContentBytes: data, ContentType: contentType, FileName: name})
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	return res.ContentURI
}

func downloadPath(mxc id.ContentURI) string {
	return "/_matrix/client/v1/media/download/" + mxc.Homeserver + "/" + mxc.FileID
}

func TestMediaUploadDownload(t *testing.T) {
	node := shoaltest.Start(t)
	alice, bob := node.Register("alice"), node.Register("bob")
	ctx := context.Background()

	text := []byte("hello, media\n")
	mxc := upload(t, alice, text, "text/plain; charset=utf-8", "hello wörld.txt")
	if mxc.Homeserver != node.ServerName() || len(mxc.FileID) < 32 {
		t.Fatalf("content URI %s", mxc)
	}
	got, err := bob.DownloadBytes(ctx, mxc)
	if err != nil || !bytes.Equal(got, text) {
		t.Fatalf("download: %q, %v", got, err)
	}

	resp, body := mediaReq(t, node, bob.AccessToken, "GET", downloadPath(mxc), nil, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, text) {
		t.Fatalf("raw download: %d %q", resp.StatusCode, body)
	}
	h := resp.Header
	if h.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type %q", h.Get("Content-Type"))
	}
	if cd := h.Get("Content-Disposition"); !strings.HasPrefix(cd, "inline;") || !strings.Contains(cd, "filename*=utf-8''hello%20w%C3%B6rld.txt") {
		t.Errorf("Content-Disposition %q", cd)
	}
	if csp := h.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "sandbox; default-src 'none';") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	if h.Get("Cross-Origin-Resource-Policy") != "cross-origin" || h.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers %v", h)
	}

	// The file name in the path wins; HTML is never inline.
	page := upload(t, alice, []byte("<script>alert(1)</script>"), "text/html", "")
	resp, _ = mediaReq(t, node, bob.AccessToken, "GET", downloadPath(page)+"/page.html", nil, nil)
	if cd := resp.Header.Get("Content-Disposition"); cd != `attachment; filename=page.html` {
		t.Errorf("HTML Content-Disposition %q", cd)
	}

	// Ranges.
	resp, body = mediaReq(t, node, bob.AccessToken, "GET", downloadPath(mxc), nil, http.Header{"Range": {"bytes=0-4"}})
	if resp.StatusCode != http.StatusPartialContent || string(body) != "hello" {
		t.Errorf("range: %d %q", resp.StatusCode, body)
	}

	// Authentication, unknown media, remote media, malformed IDs.
	resp, body = mediaReq(t, node, "", "GET", downloadPath(mxc), nil, nil)
	wantErr(t, resp, body, 401, "M_MISSING_TOKEN")
	resp, body = mediaReq(t, node, bob.AccessToken, "GET", "/_matrix/client/v1/media/download/"+node.ServerName()+"/"+mxc.FileID[:12]+strings.Repeat("A", 24), nil, nil)
	wantErr(t, resp, body, 404, "M_NOT_FOUND")
	// Remote media is fetched over federation (federation_media_remote.go): an unreachable server is 502.
	resp, body = mediaReq(t, node, bob.AccessToken, "GET", "/_matrix/client/v1/media/download/elsewhere.example/"+mxc.FileID, nil, nil)
	wantErr(t, resp, body, 502, "M_UNKNOWN")
	resp, body = mediaReq(t, node, bob.AccessToken, "GET", "/_matrix/client/v1/media/download/"+node.ServerName()+"/..%2F..%2Fetc", nil, nil)
	wantErr(t, resp, body, 404, "M_NOT_FOUND")

	cfg, err := alice.GetMediaConfig(ctx)
	if err != nil || cfg.UploadSize != gateway.DefaultMaxUploadBytes {
		t.Fatalf("config: %+v %v", cfg, err)
	}
	resp, body = mediaReq(t, node, alice.AccessToken, "GET", "/_matrix/media/v3/config", nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"m.upload.size"`) {
		t.Errorf("legacy config: %d %s", resp.StatusCode, body)
	}

	// Media survives a restart.
	node.Restart()
	got, err = bob.DownloadBytes(ctx, mxc)
	if err != nil || !bytes.Equal(got, text) {
		t.Fatalf("download after restart: %q, %v", got, err)
	}
}

// blobFiles lists the blob files of the node (not staged files).
func blobFiles(t testing.TB, node *shoaltest.Node) map[string]string {
	t.Helper()
	out := map[string]string{}
	matches, err := filepath.Glob(filepath.Join(node.DataDir(), "partitions", "p-*.media", "??", "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range matches {
		out[filepath.Base(m)] = m
	}
	return out
}

func TestMediaDeduplicates(t *testing.T) {
	node := shoaltest.Start(t)
	alice := node.Register("alice")
	data := bytes.Repeat([]byte("same bytes "), 1000)
	a := upload(t, alice, data, "application/octet-stream", "a.bin")
	b := upload(t, alice, data, "application/octet-stream", "b.bin")
	if a == b {
		t.Fatal("two uploads got one media ID")
	}
	sum := sha256.Sum256(data)
	blobs := blobFiles(t, node)
	if len(blobs) != 1 {
		t.Fatalf("blob files: %v", blobs)
	}
	p, ok := blobs[hex.EncodeToString(sum[:])]
	if !ok {
		t.Fatalf("no blob named by the content's SHA-256: %v", blobs)
	}
	if onDisk, _ := os.ReadFile(p); !bytes.Equal(onDisk, data) {
		t.Fatal("blob content differs")
	}
	for _, mxc := range []id.ContentURI{a, b} {
		resp, body := mediaReq(t, node, alice.AccessToken, "GET", downloadPath(mxc), nil, nil)
		if resp.StatusCode != 200 || !bytes.Equal(body, data) {
			t.Fatalf("download %s: %d", mxc, resp.StatusCode)
		}
		if !strings.Contains(resp.Header.Get("Content-Disposition"), ".bin") {
			t.Errorf("each upload keeps its own name: %q", resp.Header.Get("Content-Disposition"))
		}
	}
	// Staging leaves nothing behind.
	if staged, _ := filepath.Glob(filepath.Join(node.DataDir(), "partitions", "p-*.media", "staging", "*")); len(staged) != 0 {
		t.Errorf("staged files left: %v", staged)
	}
}

// testImage is a w×h gradient, opaque or with a transparent half.
func testImage(w, h int, alpha bool) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			a := uint8(255)
			if alpha && x < w/2 {
				a = 0
			}
			img.SetNRGBA(x, y, color.NRGBA{uint8(x), uint8(y), 128, a})
		}
	}
	return img
}

func encodeJPEG(t testing.TB, w, h int) []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, testImage(w, h, false), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodePNG(t testing.TB, w, h int, alpha bool) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, testImage(w, h, alpha)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeGIF(t testing.TB, w, h int) []byte {
	var b bytes.Buffer
	if err := gif.Encode(&b, testImage(w, h, false), &gif.Options{NumColors: 64}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// encodeWebP writes a lossless WebP (VP8L) of one colour: five single-symbol
// prefix codes, so that no pixel needs a bit.
func encodeWebP(w, h int, c color.NRGBA) []byte {
	var bits []byte
	var acc uint64
	var n uint
	put := func(v uint64, width uint) {
		acc |= v << n
		n += width
		for n >= 8 {
			bits = append(bits, byte(acc))
			acc >>= 8
			n -= 8
		}
	}
	put(0x2f, 8)
	put(uint64(w-1), 14)
	put(uint64(h-1), 14)
	put(0, 1) // alpha is not used
	put(0, 3) // version
	put(0, 1) // no transform
	put(0, 1) // no colour cache
	put(0, 1) // no meta prefix codes
	for _, sym := range []uint8{c.G, c.R, c.B, c.A, 0} {
		put(1, 1) // simple code
		put(0, 1) // one symbol
		put(1, 1) // of eight bits
		put(uint64(sym), 8)
	}
	if n > 0 {
		bits = append(bits, byte(acc))
	}
	if len(bits)%2 == 1 {
		bits = append(bits, 0)
	}
	var out bytes.Buffer
	out.WriteString("RIFF")
	_ = binary.Write(&out, binary.LittleEndian, uint32(4+8+len(bits)))
	out.WriteString("WEBPVP8L")
	_ = binary.Write(&out, binary.LittleEndian, uint32(len(bits)))
	out.Write(bits)
	return out.Bytes()
}

func thumbnail(t testing.TB, node *shoaltest.Node, token string, mxc id.ContentURI, w, h int, method string) (*http.Response, []byte) {
	t.Helper()
	return mediaReq(t, node, token, "GET", fmt.Sprintf("/_matrix/client/v1/media/thumbnail/%s/%s?width=%d&height=%d&method=%s",
		mxc.Homeserver, mxc.FileID, w, h, method), nil, nil)
}

func TestMediaThumbnails(t *testing.T) {
	node := shoaltest.Start(t)
	alice := node.Register("alice")
	cases := []struct {
		name, ct string
		data     []byte
		outType  string
	}{
		{"jpeg", "image/jpeg", encodeJPEG(t, 800, 400), "image/jpeg"},
		{"png-alpha", "image/png", encodePNG(t, 800, 400, true), "image/png"},
		{"png-opaque", "image/png", encodePNG(t, 800, 400, false), "image/jpeg"},
		{"gif", "image/gif", encodeGIF(t, 800, 400), "image/jpeg"},
		{"webp", "image/webp", encodeWebP(800, 400, color.NRGBA{10, 200, 30, 255}), "image/jpeg"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mxc := upload(t, alice, c.data, c.ct, "")
			for _, tc := range []struct {
				w, h   int
				method string
				ow, oh int
			}{
				{32, 32, "crop", 32, 32},
				{90, 60, "crop", 96, 96},
				{100, 100, "scale", 320, 160},
				{700, 500, "scale", 800, 400}, // no larger than the original: the original
			} {
				resp, body := thumbnail(t, node, alice.AccessToken, mxc, tc.w, tc.h, tc.method)
				if resp.StatusCode != 200 {
					t.Fatalf("%dx%d %s: %d %s", tc.w, tc.h, tc.method, resp.StatusCode, body)
				}
				img, format, err := image.Decode(bytes.NewReader(body))
				if err != nil {
					t.Fatalf("%dx%d %s: decode: %v", tc.w, tc.h, tc.method, err)
				}
				if b := img.Bounds(); b.Dx() != tc.ow || b.Dy() != tc.oh {
					t.Errorf("%dx%d %s: got %dx%d %s, want %dx%d", tc.w, tc.h, tc.method, b.Dx(), b.Dy(), format, tc.ow, tc.oh)
				}
				want := c.outType
				if tc.ow == 800 {
					want = c.ct
				}
				if got := resp.Header.Get("Content-Type"); got != want {
					t.Errorf("%dx%d %s: Content-Type %s, want %s", tc.w, tc.h, tc.method, got, want)
				}
				if !strings.HasPrefix(resp.Header.Get("Content-Disposition"), "inline") {
					t.Errorf("thumbnail Content-Disposition %q", resp.Header.Get("Content-Disposition"))
				}
			}
		})
	}

	// Thumbnails are kept: asking again does not make another blob.
	mxc := upload(t, alice, encodePNG(t, 300, 300, false), "image/png", "")
	thumbnail(t, node, alice.AccessToken, mxc, 96, 96, "crop")
	before := len(blobFiles(t, node))
	resp, _ := thumbnail(t, node, alice.AccessToken, mxc, 80, 80, "crop")
	if resp.StatusCode != 200 || len(blobFiles(t, node)) != before {
		t.Errorf("repeated thumbnail: %d, blobs %d → %d", resp.StatusCode, before, len(blobFiles(t, node)))
	}

	// Not an image; a decompression bomb's header; bad parameters.
	text := upload(t, alice, []byte("not an image"), "image/png", "")
	resp, body := thumbnail(t, node, alice.AccessToken, text, 32, 32, "crop")
	wantErr(t, resp, body, 400, "M_UNKNOWN")
	bomb := []byte("GIF89a\xff\xff\xff\xff\x00\x00\x00;")
	big := upload(t, alice, bomb, "image/gif", "")
	resp, body = thumbnail(t, node, alice.AccessToken, big, 32, 32, "crop")
	wantErr(t, resp, body, 413, "M_TOO_LARGE")
	resp, body = thumbnail(t, node, alice.AccessToken, mxc, 0, 32, "crop")
	wantErr(t, resp, body, 400, "M_INVALID_PARAM")
	resp, body = thumbnail(t, node, alice.AccessToken, mxc, 32, 32, "stretch")
	wantErr(t, resp, body, 400, "M_INVALID_PARAM")
}

func TestMediaThumbnailPixelLimit(t *testing.T) {
	node := shoaltest.Start(t, withMedia(func(c *gateway.MediaConfig) { c.MaxThumbnailPixels = 100_000 }))
	alice := node.Register("alice")
	mxc := upload(t, alice, encodePNG(t, 400, 400, false), "image/png", "")
	resp, body := thumbnail(t, node, alice.AccessToken, mxc, 32, 32, "crop")
	wantErr(t, resp, body, 413, "M_TOO_LARGE")
}

func TestMediaAsyncUpload(t *testing.T) {
	node := shoaltest.Start(t, withMedia(func(c *gateway.MediaConfig) { c.MaxPendingUploads = 3 }))
	alice, bob := node.Register("alice"), node.Register("bob")
	ctx := context.Background()

	created, err := alice.CreateMXC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if exp := created.UnusedExpiresAt.UnixMilli(); exp < time.Now().Add(23*time.Hour).UnixMilli() || exp > time.Now().Add(25*time.Hour).UnixMilli() {
		t.Errorf("unused_expires_at %d", exp)
	}
	mxc := created.ContentURI
	resp, body := mediaReq(t, node, bob.AccessToken, "GET", downloadPath(mxc)+"?timeout_ms=100", nil, nil)
	wantErr(t, resp, body, 504, "M_NOT_YET_UPLOADED")
	resp, body = mediaReq(t, node, bob.AccessToken, "GET", "/_matrix/client/v1/media/thumbnail/"+mxc.Homeserver+"/"+mxc.FileID+"?width=32&height=32&timeout_ms=0", nil, nil)
	wantErr(t, resp, body, 504, "M_NOT_YET_UPLOADED")

	// A download waiting on the upload gets it once it lands.
	data := []byte("late bytes")
	var wg sync.WaitGroup
	var waited []byte
	var waitedStatus int
	wg.Go(func() {
		resp, body := mediaReq(t, node, bob.AccessToken, "GET", downloadPath(mxc)+"?timeout_ms=10000", nil, nil)
		waited, waitedStatus = body, resp.StatusCode
	})
	time.Sleep(200 * time.Millisecond)

	// Only the creator may upload.
	put := "/_matrix/media/v3/upload/" + mxc.Homeserver + "/" + mxc.FileID
	resp, body = mediaReq(t, node, bob.AccessToken, "PUT", put, bytes.NewReader(data), nil)
	wantErr(t, resp, body, 403, "M_FORBIDDEN")

	if _, err := alice.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: data, ContentType: "text/plain", MXC: mxc}); err != nil {
		t.Fatalf("async upload: %v", err)
	}
	wg.Wait()
	if waitedStatus != 200 || !bytes.Equal(waited, data) {
		t.Fatalf("waiting download: %d %q", waitedStatus, waited)
	}
	resp, body = mediaReq(t, node, alice.AccessToken, "PUT", put, bytes.NewReader(data), nil)
	wantErr(t, resp, body, 409, "M_CANNOT_OVERWRITE_MEDIA")

	// Unknown IDs; the pending-upload limit.
	resp, body = mediaReq(t, node, alice.AccessToken, "PUT", put[:len(put)-24]+strings.Repeat("x", 24), bytes.NewReader(data), nil)
	wantErr(t, resp, body, 404, "M_NOT_FOUND")
	for range 3 {
		if _, err := alice.CreateMXC(ctx); err != nil {
			t.Fatal(err)
		}
	}
	resp, body = mediaReq(t, node, alice.AccessToken, "POST", "/_matrix/media/v1/create", nil, nil)
	wantErr(t, resp, body, 429, "M_LIMIT_EXCEEDED")
	if _, err := bob.CreateMXC(ctx); err != nil {
		t.Fatalf("another user's limit is their own: %v", err)
	}

	// mautrix's UploadAsync: create, then PUT in the background.
	res, err := bob.UploadAsync(ctx, mautrix.ReqUploadMedia{ContentBytes: []byte("async"), ContentType: "text/plain"})
	if err != nil {
		t.Fatal(err)
	}
	resp, body = mediaReq(t, node, alice.AccessToken, "GET", downloadPath(res.ContentURI)+"?timeout_ms=10000", nil, nil)
	if resp.StatusCode != 200 || string(body) != "async" {
		t.Fatalf("UploadAsync download: %d %q", resp.StatusCode, body)
	}
}

func TestMediaCreatedIDsExpire(t *testing.T) {
	node := shoaltest.Start(t, withMedia(func(c *gateway.MediaConfig) {
		c.UnusedExpiry = 300 * time.Millisecond
		c.MaxPendingUploads = 1
	}))
	alice := node.Register("alice")
	created, err := alice.CreateMXC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	mxc := created.ContentURI
	resp, body := mediaReq(t, node, alice.AccessToken, "PUT", "/_matrix/media/v3/upload/"+mxc.Homeserver+"/"+mxc.FileID, strings.NewReader("x"), nil)
	wantErr(t, resp, body, 404, "M_NOT_FOUND")
	resp, body = mediaReq(t, node, alice.AccessToken, "GET", downloadPath(mxc)+"?timeout_ms=0", nil, nil)
	wantErr(t, resp, body, 404, "M_NOT_FOUND")
	// The expired ID no longer counts against the limit of one.
	if _, err := alice.CreateMXC(context.Background()); err != nil {
		t.Fatalf("create after expiry: %v", err)
	}
}

func registerGuest(t testing.TB, node *shoaltest.Node) string {
	t.Helper()
	resp, body := mediaReq(t, node, "", "POST", "/_matrix/client/v3/register?kind=guest", strings.NewReader("{}"), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("guest registration: %d %s", resp.StatusCode, body)
	}
	var r struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.AccessToken == "" {
		t.Fatalf("guest registration: %s", body)
	}
	return r.AccessToken
}

func TestMediaGuests(t *testing.T) {
	node := shoaltest.Start(t)
	alice := node.Register("alice")
	guest := registerGuest(t, node)
	mxc := upload(t, alice, encodePNG(t, 200, 200, false), "image/png", "")

	resp, _ := mediaReq(t, node, guest, "GET", downloadPath(mxc), nil, nil)
	if resp.StatusCode != 200 {
		t.Errorf("guest download: %d", resp.StatusCode)
	}
	resp, _ = thumbnail(t, node, guest, mxc, 32, 32, "crop")
	if resp.StatusCode != 200 {
		t.Errorf("guest thumbnail: %d", resp.StatusCode)
	}
	resp, body := mediaReq(t, node, guest, "POST", "/_matrix/media/v3/upload", strings.NewReader("x"), nil)
	wantErr(t, resp, body, 403, "M_GUEST_ACCESS_FORBIDDEN")
	resp, body = mediaReq(t, node, guest, "POST", "/_matrix/media/v1/create", nil, nil)
	wantErr(t, resp, body, 403, "M_GUEST_ACCESS_FORBIDDEN")
}

func TestMediaLegacyEndpointsFrozen(t *testing.T) {
	node := shoaltest.Start(t)
	alice := node.Register("alice")
	mxc := upload(t, alice, encodePNG(t, 200, 200, false), "image/png", "")
	for _, path := range []string{
		"/_matrix/media/v3/download/" + mxc.Homeserver + "/" + mxc.FileID,
		"/_matrix/media/v3/download/" + mxc.Homeserver + "/" + mxc.FileID + "/x.png",
		"/_matrix/media/v3/thumbnail/" + mxc.Homeserver + "/" + mxc.FileID + "?width=32&height=32",
	} {
		resp, body := mediaReq(t, node, "", "GET", path, nil, nil)
		wantErr(t, resp, body, 404, "M_NOT_FOUND")
		resp, body = mediaReq(t, node, alice.AccessToken, "GET", path, nil, nil)
		wantErr(t, resp, body, 404, "M_NOT_FOUND")
	}

	// A freeze date in the future serves what was uploaded before it.
	thawed := shoaltest.Start(t, withMedia(func(c *gateway.MediaConfig) { c.UnauthenticatedUntil = time.Now().Add(time.Hour) }))
	bob := thawed.Register("bob")
	data := []byte("old media")
	old := upload(t, bob, data, "text/plain", "")
	resp, body := mediaReq(t, thawed, "", "GET", "/_matrix/media/v3/download/"+old.Homeserver+"/"+old.FileID, nil, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("legacy download before the freeze: %d %q", resp.StatusCode, body)
	}
	pic := upload(t, bob, encodePNG(t, 200, 200, false), "image/png", "")
	resp, body = mediaReq(t, thawed, "", "GET", "/_matrix/media/v3/thumbnail/"+pic.Homeserver+"/"+pic.FileID+"?width=32&height=32&method=crop", nil, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/jpeg" {
		t.Fatalf("legacy thumbnail before the freeze: %d %s", resp.StatusCode, body)
	}
	resp, body = mediaReq(t, thawed, "", "GET", "/_matrix/media/v3/thumbnail/"+pic.Homeserver+"/"+pic.FileID[:12]+strings.Repeat("Q", 24)+"?width=32&height=32", nil, nil)
	wantErr(t, resp, body, 404, "M_NOT_FOUND")
}

func TestMediaTooLarge(t *testing.T) {
	node := shoaltest.Start(t, withMedia(func(c *gateway.MediaConfig) { c.MaxUploadBytes = 2000 }))
	alice := node.Register("alice")
	cfg, err := alice.GetMediaConfig(context.Background())
	if err != nil || cfg.UploadSize != 2000 {
		t.Fatalf("config: %+v %v", cfg, err)
	}
	upload(t, alice, make([]byte, 2000), "application/octet-stream", "")
	resp, body := mediaReq(t, node, alice.AccessToken, "POST", "/_matrix/media/v3/upload", bytes.NewReader(make([]byte, 2001)), nil)
	wantErr(t, resp, body, 413, "M_TOO_LARGE")
	// Without a Content-Length the limit holds while streaming.
	resp, body = mediaReq(t, node, alice.AccessToken, "POST", "/_matrix/media/v3/upload", io.MultiReader(bytes.NewReader(make([]byte, 3000))), nil)
	if resp.Request.ContentLength > 0 {
		t.Fatal("expected a chunked request")
	}
	wantErr(t, resp, body, 413, "M_TOO_LARGE")
	// Bodies of other routes keep the small limit.
	resp, body = mediaReq(t, node, alice.AccessToken, "PUT", "/_matrix/client/v3/user/"+string(alice.UserID)+"/account_data/big",
		bytes.NewReader(make([]byte, 2<<20)), nil)
	wantErr(t, resp, body, 413, "M_TOO_LARGE")
	if staged, _ := filepath.Glob(filepath.Join(node.DataDir(), "partitions", "p-*.media", "staging", "*")); len(staged) != 0 {
		t.Errorf("staged files left: %v", staged)
	}
	// A filename with control characters.
	resp, body = mediaReq(t, node, alice.AccessToken, "POST", "/_matrix/media/v3/upload?filename=a%0Ab", strings.NewReader("x"), nil)
	wantErr(t, resp, body, 400, "M_INVALID_PARAM")
}

func TestMediaQuota(t *testing.T) {
	node := shoaltest.Start(t, withMedia(func(c *gateway.MediaConfig) { c.QuotaBytes = 10100 }))
	alice, bob := node.Register("alice"), node.Register("bob")
	upload(t, alice, make([]byte, 6000), "application/octet-stream", "")
	resp, body := mediaReq(t, node, alice.AccessToken, "POST", "/_matrix/media/v3/upload", bytes.NewReader(make([]byte, 5000)), nil)
	wantErr(t, resp, body, 403, "M_FORBIDDEN")
	// Small files are charged 4 KiB: one more fits, then none.
	upload(t, alice, []byte("a"), "text/plain", "")
	resp, body = mediaReq(t, node, alice.AccessToken, "POST", "/_matrix/media/v3/upload", strings.NewReader("b"), nil)
	wantErr(t, resp, body, 403, "M_FORBIDDEN")
	// The quota is per user and survives a restart.
	upload(t, bob, make([]byte, 6000), "application/octet-stream", "")
	node.Restart()
	resp, body = mediaReq(t, node, alice.AccessToken, "POST", "/_matrix/media/v3/upload", strings.NewReader("b"), nil)
	wantErr(t, resp, body, 403, "M_FORBIDDEN")
}

const previewPage = `<!doctype html><html><head>
<title>Fallback title</title>
<meta property="og:title" content="A &amp; B">
<meta property="og:description" content="What the page is about">
<meta property="og:image" content="/pic.png">
</head><body>hello</body></html>`

func previewServer(t *testing.T) *httptest.Server {
	pic := encodePNG(t, 64, 64, false)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/page":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = io.WriteString(w, previewPage)
		case "/plain":
			w.Header().Set("Content-Type", "text/html")
			_, _ = io.WriteString(w, `<html><head><title>Just a title</title><meta name="description" content="desc"></head></html>`)
		case "/pic.png":
			w.Header().Set("Content-Type", "image/png")
			_, _ = w.Write(pic)
		case "/huge":
			w.Header().Set("Content-Type", "text/html")
			_, _ = io.WriteString(w, "<html><head><title>"+strings.Repeat("x", 3<<20)+"</title></head></html>")
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestMediaPreviewAllowlisted(t *testing.T) {
	srv := previewServer(t)
	node := shoaltest.Start(t, withMedia(func(c *gateway.MediaConfig) {
		c.Preview.AllowNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}))
	alice := node.Register("alice")
	ctx := context.Background()
	p, err := alice.GetURLPreview(ctx, srv.URL+"/page")
	if err != nil {
		t.Fatal(err)
	}
	if p.Title != "A & B" || p.Description != "What the page is about" {
		t.Errorf("preview %+v", p)
	}
	if p.ImageURL == "" || int(p.ImageSize) != len(encodePNG(t, 64, 64, false)) {
		t.Fatalf("og:image %q size %d", p.ImageURL, p.ImageSize)
	}
	img, err := alice.DownloadBytes(ctx, p.ImageURL.ParseOrIgnore())
	if err != nil || !bytes.Equal(img, encodePNG(t, 64, 64, false)) {
		t.Fatalf("og:image download: %v", err)
	}
	p, err = alice.GetURLPreview(ctx, srv.URL+"/plain")
	if err != nil || p.Title != "Just a title" || p.Description != "desc" {
		t.Errorf("fallbacks: %+v %v", p, err)
	}
	// An image URL previews as the image.
	p, err = alice.GetURLPreview(ctx, srv.URL+"/pic.png")
	if err != nil || p.ImageURL == "" {
		t.Errorf("image preview: %+v %v", p, err)
	}
	// Only the first MiB is read.
	p, err = alice.GetURLPreview(ctx, srv.URL+"/huge")
	if err != nil || len(p.Title) > 1024 {
		t.Errorf("huge page: %d %v", len(p.Title), err)
	}
	resp, body := mediaReq(t, node, alice.AccessToken, "GET", "/_matrix/client/v1/media/preview_url?url=file:///etc/passwd", nil, nil)
	wantErr(t, resp, body, 400, "M_INVALID_PARAM")
	resp, body = mediaReq(t, node, alice.AccessToken, "GET", "/_matrix/client/v1/media/preview_url?url="+srv.URL+"/missing", nil, nil)
	wantErr(t, resp, body, 502, "M_UNKNOWN")
}

func TestMediaPreviewRefusesLoopbackByDefault(t *testing.T) {
	srv := previewServer(t)
	node := shoaltest.Start(t)
	alice := node.Register("alice")
	port := srv.URL[strings.LastIndexByte(srv.URL, ':'):]
	for _, u := range []string{srv.URL + "/page", "http://localhost" + port + "/page", "http://[::1]" + port + "/page", "http://0.0.0.0" + port + "/page"} {
		resp, body := mediaReq(t, node, alice.AccessToken, "GET", "/_matrix/client/v1/media/preview_url?url="+u, nil, nil)
		wantErr(t, resp, body, 502, "M_UNKNOWN")
	}
}
