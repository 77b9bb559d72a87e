package interop

import (
	"bytes"
	"context"
	"crypto/rand"
	"image"
	"image/color"
	_ "image/jpeg" // servers may thumbnail as JPEG
	"image/png"
	"io"
	"net/http"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
)

// media: a user of b downloads, through its own server (authenticated
// media, client v1), a file a user of a uploaded: b's server fetches it
// over federation (federation v1 media/download) and passes on the exact
// bytes and type.
func (p *pair) media(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	uploader, reader := a.register("muploader"+tag), b.register("mreader"+tag)
	data := make([]byte, 100<<10)
	_, _ = rand.Read(data)
	up, err := uploader.UploadBytes(ctx, data, "application/octet-stream")
	if err != nil {
		t.Fatalf("%s uploads: %v", uploader.UserID, err)
	}
	if up.ContentURI.Homeserver != a.server {
		t.Fatalf("upload answered %s, want a media ID of %s", up.ContentURI, a.server)
	}
	u := reader.BuildURL(mautrix.ClientURLPath{"v1", "media", "download", up.ContentURI.Homeserver, up.ContentURI.FileID})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+reader.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s downloads %s through %s: %s %s\nshoal's log:\n%s\nDendrite's log:\n%s", reader.UserID, up.ContentURI, b.name,
			resp.Status, got, tail(fileGrep(p.shoalLog, up.ContentURI.FileID), 3000), tail(p.den.LogGrep(up.ContentURI.FileID), 3000))
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("%s downloads %s: %d bytes, not the %d uploaded", reader.UserID, up.ContentURI, len(got), len(data))
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/octet-stream" {
		t.Fatalf("%s downloads %s: Content-Type %q", reader.UserID, up.ContentURI, ct)
	}
}

// thumbnail: a user of b asks its own server for a thumbnail of an image
// a user of a uploaded; b's server gets it over federation (federation v1
// media/thumbnail) and serves a decodable image no larger than the
// original.
func (p *pair) thumbnail(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	uploader, reader := a.register("tuploader"+tag), b.register("treader"+tag)
	img := image.NewRGBA(image.Rect(0, 0, 128, 96))
	for x := range 128 {
		for y := range 96 {
			img.Set(x, y, color.RGBA{uint8(x * 2), uint8(y * 2), 200, 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	up, err := uploader.UploadBytes(ctx, buf.Bytes(), "image/png")
	if err != nil {
		t.Fatalf("%s uploads: %v", uploader.UserID, err)
	}
	u := reader.BuildURLWithQuery(mautrix.ClientURLPath{"v1", "media", "thumbnail", up.ContentURI.Homeserver, up.ContentURI.FileID},
		map[string]string{"width": "32", "height": "32", "method": "scale"})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+reader.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s's thumbnail of %s through %s: %s %s\nshoal's log:\n%s\nDendrite's log:\n%s", reader.UserID, up.ContentURI, b.name,
			resp.Status, got, tail(fileGrep(p.shoalLog, up.ContentURI.FileID), 3000), tail(p.den.LogGrep(up.ContentURI.FileID), 3000))
	}
	thumb, format, err := image.Decode(bytes.NewReader(got))
	if err != nil {
		t.Fatalf("%s's thumbnail of %s (%s): %v", reader.UserID, up.ContentURI, resp.Header.Get("Content-Type"), err)
	}
	if sz := thumb.Bounds().Size(); sz.X < 1 || sz.X > 128 || sz.Y < 1 || sz.Y > 96 ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "image/"+format) {
		t.Fatalf("%s's thumbnail of %s: %s %v", reader.UserID, up.ContentURI, resp.Header.Get("Content-Type"), sz)
	}
}
