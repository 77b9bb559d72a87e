package gateway_test

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"testing"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// BenchmarkMediaUpload uploads 1 MiB files (each different, so every one is
// hashed, fsynced and renamed into place) over loopback HTTP.
func BenchmarkMediaUpload(b *testing.B) {
	node := shoaltest.Start(b)
	alice := node.Register("alice")
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		binary.BigEndian.PutUint64(data, uint64(i))
		resp, body := mediaReq(b, node, alice.AccessToken, "POST", "/_matrix/media/v3/upload", bytes.NewReader(data), nil)
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("upload: %d %s", resp.StatusCode, body)
		}
	}
}

// BenchmarkMediaDownload downloads one 1 MiB file over loopback HTTP.
func BenchmarkMediaDownload(b *testing.B) {
	node := shoaltest.Start(b)
	alice := node.Register("alice")
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	mxc := upload(b, alice, data, "application/octet-stream", "")
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		resp, body := mediaReq(b, node, alice.AccessToken, "GET", downloadPath(mxc), nil, nil)
		if resp.StatusCode != http.StatusOK || len(body) != len(data) {
			b.Fatalf("download: %d", resp.StatusCode)
		}
	}
}

// BenchmarkMediaThumbnailCached serves a thumbnail already made.
func BenchmarkMediaThumbnailCached(b *testing.B) {
	node := shoaltest.Start(b)
	alice := node.Register("alice")
	mxc := upload(b, alice, encodeJPEG(b, 1920, 1080), "image/jpeg", "")
	thumbnail(b, node, alice.AccessToken, mxc, 320, 240, "scale")
	b.ResetTimer()
	for b.Loop() {
		resp, _ := thumbnail(b, node, alice.AccessToken, mxc, 320, 240, "scale")
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("thumbnail: %d", resp.StatusCode)
		}
	}
}
