package gateway

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// Media through a node that does not hold the media actor's partition.
//
// The local fast path (client_media.go) hands file paths between the
// gateway and the media actor: the upload is written straight into the
// actor's staging directory and a download is served from the blob file,
// with no copy through the actor. That only works on the node whose disk
// holds the partition. Anywhere else the gateway streams the bytes through
// the actor in chunks of at most actors.MediaChunkMax (an upload session of
// MediaAppend messages, MediaRead for downloads), one chunk in flight at a
// time, so memory stays bounded by a chunk per request whatever the file's
// size.

// localRouter is implemented by routers that know where an actor runs
// (cluster.Node). A router without it is taken to be all local.
type localRouter interface {
	Local(identity string) bool
}

// mediaLocal reports whether the media actor of owner runs on this node.
func (s *Server) mediaLocal(owner string) bool {
	lr, ok := s.router.(localRouter)
	return !ok || lr.Local(pb.MediaIdentity(s.cfg.ServerName, owner))
}

// streamUpload sends body, at most limit bytes, to the upload session
// uploadID chunk by chunk. On failure the session is aborted.
func (s *Server) streamUpload(ctx context.Context, owner, uploadID string, body io.Reader, limit int64) error {
	err := s.sendChunks(ctx, owner, uploadID, body, limit)
	if err != nil {
		s.router.Send(&pb.MediaAppend{Server: s.cfg.ServerName, OwnerKey: owner, UploadId: uploadID, Abort: true})
	}
	return err
}

func (s *Server) sendChunks(ctx context.Context, owner, uploadID string, body io.Reader, limit int64) error {
	buf := make([]byte, actors.MediaChunkMax)
	body = io.LimitReader(body, limit+1)
	var off int64
	for {
		n, rerr := io.ReadFull(body, buf)
		if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
			if mbe := (*http.MaxBytesError)(nil); errors.As(rerr, &mbe) {
				return errTooLarge
			}
			return errStatus(http.StatusBadRequest, "M_BAD_JSON", "could not read the upload")
		}
		if off+int64(n) > limit {
			return errStatus(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "cannot upload files larger than "+strconv.FormatInt(limit, 10)+" bytes")
		}
		if n > 0 {
			// The reply comes after the actor wrote the chunk, so buf is
			// free again for the next one.
			res, err := s.router.Request(ctx, &pb.MediaAppend{Server: s.cfg.ServerName, OwnerKey: owner,
				UploadId: uploadID, Offset: off, Data: buf[:n]})
			if err != nil {
				return err
			}
			if _, ok := res.(*pb.MediaAppendReply); !ok {
				return errors.New("media: unexpected append reply")
			}
			off += int64(n)
			s.metrics.mediaRemote.WithLabelValues("upload").Add(float64(n))
		}
		if rerr != nil {
			return nil
		}
	}
}

// openBlob opens the blob of info: the file itself when the media actor is
// on this node, else a reader that fetches it from the actor by chunks.
func (s *Server) openBlob(ctx context.Context, owner string, info *pb.MediaInfo) (io.ReadSeekCloser, error) {
	if s.mediaLocal(owner) || info.Blob == "" {
		return os.Open(info.Path)
	}
	return &remoteBlob{ctx: ctx, s: s, owner: owner, blob: info.Blob, size: info.Size}, nil
}

// remoteBlob reads a blob on another node through its media actor, one
// chunk at a time. http.ServeContent seeks it for ranges and its size.
type remoteBlob struct {
	ctx   context.Context
	s     *Server
	owner string
	blob  string
	size  int64
	off   int64
	// buf holds the chunk fetched at bufOff.
	buf    []byte
	bufOff int64
}

func (b *remoteBlob) Read(p []byte) (int, error) {
	if b.off >= b.size {
		return 0, io.EOF
	}
	if b.off < b.bufOff || b.off >= b.bufOff+int64(len(b.buf)) {
		if err := b.fetch(); err != nil {
			return 0, err
		}
	}
	n := copy(p, b.buf[b.off-b.bufOff:])
	b.off += int64(n)
	return n, nil
}

func (b *remoteBlob) fetch() error {
	length := min(int64(actors.MediaChunkMax), b.size-b.off)
	res, err := b.s.router.Request(b.ctx, &pb.MediaRead{Server: b.s.cfg.ServerName, OwnerKey: b.owner,
		Blob: b.blob, Offset: b.off, Length: int32(length)})
	if err != nil {
		return err
	}
	c, ok := res.(*pb.MediaChunk)
	if !ok {
		return errors.New("media: unexpected read reply")
	}
	if len(c.Data) == 0 {
		// The blob is shorter than its record says.
		return io.ErrUnexpectedEOF
	}
	b.buf, b.bufOff = c.Data, b.off
	b.s.metrics.mediaRemote.WithLabelValues("download").Add(float64(len(c.Data)))
	return nil
}

func (b *remoteBlob) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += b.off
	case io.SeekEnd:
		offset += b.size
	default:
		return 0, errors.New("media: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("media: negative position")
	}
	b.off = offset
	return offset, nil
}

func (b *remoteBlob) Close() error {
	b.buf = nil
	return nil
}
