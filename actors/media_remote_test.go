package actors_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster"
)

// The media actor's upload sessions and blob reads, the way a gateway on
// another node uses them: chunks at their offsets, the same size, quota and
// dedup checks as a local upload, and reads that give back the bytes.
func TestMediaRemoteSessions(t *testing.T) {
	node, err := cluster.Start(cluster.Config{
		DataDir:    t.TempDir(),
		Partitions: 2,
		Kinds:      map[string]cluster.Producer{pb.KindMedia: actors.NewMedia},
		Server: &actors.ServerIdentity{ServerName: "media.test", KeyID: "ed25519:t",
			PrivateKey: ed25519.NewKeyFromSeed(make([]byte, 32))},
		RequestTimeout: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Stop(context.Background()) })
	const owner = "ownerkey0123"
	const user = "@u:media.test"
	req := func(msg pb.Targeted) (proto.Message, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return node.Request(ctx, msg)
	}
	must := func(msg pb.Targeted) proto.Message {
		t.Helper()
		res, err := req(msg)
		if err != nil {
			t.Fatalf("%T: %v", msg, err)
		}
		return res
	}
	fail := func(msg pb.Targeted, errcode string, status int) {
		t.Helper()
		_, err := req(msg)
		var me *actors.MatrixError
		if !errors.As(err, &me) || me.ErrCode != errcode || me.Status != status {
			t.Fatalf("%T: got %v, want %s (%d)", msg, err, errcode, status)
		}
	}
	lim := &pb.MediaLimits{MaxUpload: 1 << 20, Quota: 3 << 20, MaxPending: 2, UnusedExpiryMs: 60000}
	begin := func() string {
		t.Helper()
		r := must(&pb.MediaBegin{Server: "media.test", OwnerKey: owner, UserId: user, SizeHint: -1, Limits: lim, Remote: true}).(*pb.MediaBeginReply)
		if r.UploadId == "" || r.StagingDir != "" {
			t.Fatalf("remote begin: %v", r)
		}
		return r.UploadId
	}
	appendAt := func(id string, off int64, data []byte) *pb.MediaAppend {
		return &pb.MediaAppend{Server: "media.test", OwnerKey: owner, UploadId: id, Offset: off, Data: data}
	}
	commit := func(id, userID string) *pb.MediaCommit {
		return &pb.MediaCommit{Server: "media.test", OwnerKey: owner, UserId: userID, UploadId: id,
			ContentType: "application/octet-stream", Limits: lim}
	}
	data := make([]byte, actors.MediaChunkMax*2+1234)
	for i := range data {
		data[i] = byte(i * 7)
	}
	upload := func() string {
		t.Helper()
		id := begin()
		for off := 0; off < len(data); off += actors.MediaChunkMax {
			end := min(off+actors.MediaChunkMax, len(data))
			if r := must(appendAt(id, int64(off), data[off:end])).(*pb.MediaAppendReply); r.Size != int64(end) {
				t.Fatalf("append at %d: size %d", off, r.Size)
			}
		}
		return must(commit(id, user)).(*pb.MediaCommitReply).MediaId
	}

	// A chunk at the wrong offset, or larger than a chunk, is refused.
	id := begin()
	must(appendAt(id, 0, data[:10]))
	fail(appendAt(id, 5, data[:10]), "M_INVALID_PARAM", http.StatusBadRequest)
	fail(appendAt(id, 10, data[:actors.MediaChunkMax+1]), "M_INVALID_PARAM", http.StatusBadRequest)
	// Someone else's commit drops the session.
	fail(commit(id, "@other:media.test"), "M_FORBIDDEN", http.StatusForbidden)
	fail(appendAt(id, 10, data[:10]), "M_UNAVAILABLE", http.StatusServiceUnavailable)

	// Past max_upload: M_TOO_LARGE, and the session is gone.
	id = begin()
	for off := int64(0); off < lim.MaxUpload; off += actors.MediaChunkMax {
		must(appendAt(id, off, make([]byte, actors.MediaChunkMax)))
	}
	fail(appendAt(id, lim.MaxUpload, []byte{1}), "M_TOO_LARGE", http.StatusRequestEntityTooLarge)
	fail(commit(id, user), "M_UNAVAILABLE", http.StatusServiceUnavailable)

	// An aborted session is gone.
	id = begin()
	must(&pb.MediaAppend{Server: "media.test", OwnerKey: owner, UploadId: id, Abort: true})
	fail(commit(id, user), "M_UNAVAILABLE", http.StatusServiceUnavailable)

	// Two uploads of the same bytes share a blob, read back whole.
	first, second := upload(), upload()
	info1 := must(&pb.MediaGet{Server: "media.test", OwnerKey: owner, MediaId: first}).(*pb.MediaInfo)
	info2 := must(&pb.MediaGet{Server: "media.test", OwnerKey: owner, MediaId: second}).(*pb.MediaInfo)
	if info1.Blob == "" || info1.Blob != info2.Blob || info1.Size != int64(len(data)) {
		t.Fatalf("infos %v %v", info1, info2)
	}
	var got []byte
	for off := int64(0); ; {
		c := must(&pb.MediaRead{Server: "media.test", OwnerKey: owner, Blob: info1.Blob, Offset: off, Length: actors.MediaChunkMax}).(*pb.MediaChunk)
		if len(c.Data) == 0 {
			break
		}
		got = append(got, c.Data...)
		off += int64(len(c.Data))
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, want the %d uploaded", len(got), len(data))
	}
	fail(&pb.MediaRead{Server: "media.test", OwnerKey: owner, Blob: "../x", Length: 10}, "M_INVALID_PARAM", http.StatusBadRequest)
	fail(&pb.MediaRead{Server: "media.test", OwnerKey: owner, Blob: info1.Blob, Length: actors.MediaChunkMax + 1}, "M_INVALID_PARAM", http.StatusBadRequest)

	// The quota holds for streamed uploads: with room left for a begin but
	// not for the chunk sent, the commit is refused.
	lim.Quota = 2*int64(len(data)) + 5000
	id = begin()
	must(appendAt(id, 0, data[:actors.MediaChunkMax]))
	fail(commit(id, user), "M_FORBIDDEN", http.StatusForbidden)
}
