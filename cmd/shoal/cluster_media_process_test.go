package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// Media through any node of a process cluster: the uploader's media actor
// lives on one node, and uploads, downloads (whole and ranged) and
// thumbnails through the other two stream the bytes over the cluster
// transport, byte-identical to what was uploaded. Multi-node clusters cannot
// run in one process under -race (see cluster/cluster_test.go), so this
// runs real, race-enabled processes.
func TestClusterProcessesMedia(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	a, b, c := newClusterProc(t, "a"), newClusterProc(t, "b"), newClusterProc(t, "c")
	a.start(t, "")
	b.start(t, a.gossip)
	c.start(t, a.gossip)
	st := waitSettled(t, a, a, b, c)
	alice := procClient(t, a.client, "alice")

	// An async media ID names alice's media actor: find the node that
	// holds it and use the other two.
	var created struct {
		ContentURI string `json:"content_uri"`
	}
	mediaReq(t, alice, a, "POST", "/_matrix/media/v1/create", "", nil, http.StatusOK, &created)
	mediaID := created.ContentURI[strings.LastIndexByte(created.ContentURI, '/')+1:]
	part := storage.PartitionOf(pb.MediaIdentity("proc.test", mediaID[:12]), st.Partitions)
	owner := ""
	for _, p := range st.Map {
		if p.Partition == part {
			owner = p.Owner
		}
	}
	var others []*clusterProc
	for _, n := range []*clusterProc{a, b, c} {
		if nodeIDOf(t, n) != owner {
			others = append(others, n)
		}
	}
	if len(others) != 2 {
		t.Fatalf("partition %d owned by %q: %d other nodes", part, owner, len(others))
	}
	up, down := others[0], others[1]
	t.Logf("media partition %d on %s; uploading through %s", part, owner, up.name)

	// An image of incompressible pixels: several 256 KiB chunks.
	img := image.NewRGBA(image.Rect(0, 0, 640, 480))
	seed := uint32(1)
	for i := range img.Pix {
		seed = seed*1664525 + 1013904223
		img.Pix[i] = byte(seed >> 24)
	}
	for i := 3; i < len(img.Pix); i += 4 {
		img.Pix[i] = 255
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	if len(data) < 3*256<<10 {
		t.Fatalf("test image of %d bytes is too small to span chunks", len(data))
	}

	// The async upload and a plain one (the same bytes: one blob), both
	// through a node that does not hold the actor.
	mediaReq(t, alice, up, "PUT", "/_matrix/media/v3/upload/proc.test/"+mediaID+"?filename=noise.png", "image/png", data, http.StatusOK, nil)
	var uploaded struct {
		ContentURI string `json:"content_uri"`
	}
	mediaReq(t, alice, up, "POST", "/_matrix/media/v3/upload", "image/png", data, http.StatusOK, &uploaded)
	second := uploaded.ContentURI[strings.LastIndexByte(uploaded.ContentURI, '/')+1:]

	// A repeat upload of a created ID is refused, as on the local path.
	mediaReq(t, alice, down, "PUT", "/_matrix/media/v3/upload/proc.test/"+mediaID, "image/png", []byte("again"), http.StatusConflict, nil)

	for _, id := range []string{mediaID, second} {
		for _, n := range []*clusterProc{up, down} {
			got := mediaReq(t, alice, n, "GET", "/_matrix/client/v1/media/download/proc.test/"+id, "", nil, http.StatusOK, nil)
			if !bytes.Equal(got, data) {
				t.Fatalf("%s via %s: %d bytes differ from the %d uploaded", id, n.name, len(got), len(data))
			}
		}
	}
	// A range across a chunk boundary.
	req := mediaRequest(t, alice, down, "GET", "/_matrix/client/v1/media/download/proc.test/"+second, "", nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", 256<<10-100, 256<<10+99))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[256<<10-100:256<<10+100]) {
		t.Fatalf("range via %s: %d, %d bytes", down.name, resp.StatusCode, len(got))
	}

	// The bytes really crossed the cluster transport: on one host the
	// local path's file names would work across processes too.
	if n := remoteMediaBytes(t, up, "upload"); n < float64(2*len(data)) {
		t.Fatalf("%s streamed %v upload bytes, want at least %d", up.name, n, 2*len(data))
	}
	for _, n := range []*clusterProc{up, down} {
		if got := remoteMediaBytes(t, n, "download"); got < float64(2*len(data)) {
			t.Fatalf("%s streamed %v download bytes, want at least %d", n.name, got, 2*len(data))
		}
	}

	// A thumbnail made by the owner, served through the other node.
	thumb := mediaReq(t, alice, down, "GET", "/_matrix/client/v1/media/thumbnail/proc.test/"+second+"?width=64&height=64&method=crop", "", nil, http.StatusOK, nil)
	ti, _, err := image.Decode(bytes.NewReader(thumb))
	if err != nil {
		t.Fatalf("thumbnail via %s: %v", down.name, err)
	}
	if b := ti.Bounds(); b.Dx() > 640 || b.Dy() > 480 || b.Dx() < 32 || len(thumb) >= len(data) {
		t.Fatalf("thumbnail via %s is %v", down.name, b)
	}
}

func mediaRequest(t *testing.T, cli *mautrix.Client, n *clusterProc, method, path, contentType string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+n.client+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return req
}

// mediaReq makes one request through node n as cli, wants status, decodes
// a JSON reply into out when given, and returns the body.
func mediaReq(t *testing.T, cli *mautrix.Client, n *clusterProc, method, path, contentType string, body []byte, status int, out any) []byte {
	t.Helper()
	resp, err := http.DefaultClient.Do(mediaRequest(t, cli, n, method, path, contentType, body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != status {
		t.Fatalf("%s %s via %s: %d %s, want %d", method, path, n.name, resp.StatusCode, data, status)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatal(err)
		}
	}
	return data
}

// remoteMediaBytes reads shoal_media_remote_bytes_total{direction} of node n.
func remoteMediaBytes(t *testing.T, n *clusterProc, direction string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + n.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	prefix := `shoal_media_remote_bytes_total{direction="` + direction + `"} `
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}
