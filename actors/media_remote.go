package actors

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// Media over the cluster transport: a gateway on a node that does not hold
// this actor's partition cannot write the staging directory or open a blob,
// so it streams the bytes through the actor in chunks of at most
// MediaChunkMax. An upload is a session — a remote MediaBegin opens it,
// MediaAppend writes each chunk at its offset into a staged file, and
// MediaCommit adopts that file exactly as a local upload's (same hashing,
// size, quota and dedup checks). A download reads a blob by offset and
// length (MediaRead). No message carries more than one chunk, so neither
// side holds a whole file in memory.

const (
	// MediaChunkMax is the largest chunk a MediaAppend or MediaChunk
	// carries.
	MediaChunkMax = 256 << 10
	// maxUploadSessions bounds the open upload sessions of one actor: each
	// holds an open file and its disk space.
	maxUploadSessions = 16
	// uploadSessionIdle is how long a session may go without a chunk
	// before a new begin may drop it (its gateway died or gave up).
	uploadSessionIdle = 2 * time.Minute
)

// uploadSession is one remote upload being received.
type uploadSession struct {
	f        *os.File
	size     int64
	limit    int64
	user     string
	mediaID  string
	lastUsed time.Time
}

func (s *uploadSession) drop() {
	_ = s.f.Close()
	_ = os.Remove(s.f.Name())
}

// openSession starts a remote upload (after begin's checks passed).
func (a *mediaActor) openSession(m *pb.MediaBegin, dir string) (*pb.MediaBeginReply, error) {
	now := a.env.Now()
	for id, s := range a.sessions {
		if now.Sub(s.lastUsed) > uploadSessionIdle {
			s.drop()
			delete(a.sessions, id)
		}
	}
	if len(a.sessions) >= maxUploadSessions {
		e := Errorf(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "too many uploads in progress")
		e.Extra = map[string]any{"retry_after_ms": 1000}
		return nil, e
	}
	f, err := storage.CreateStaged(dir)
	if err != nil {
		return nil, fmt.Errorf("media %s: stage: %w", a.env.Identity, err)
	}
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		panic("media: no randomness: " + err.Error())
	}
	id := base64.RawURLEncoding.EncodeToString(b)
	if a.sessions == nil {
		a.sessions = map[string]*uploadSession{}
	}
	a.sessions[id] = &uploadSession{f: f, limit: m.GetLimits().GetMaxUpload(), user: m.UserId, mediaID: m.MediaId, lastUsed: now}
	return &pb.MediaBeginReply{UploadId: id}, nil
}

// errNoSession answers a chunk or commit of a session this actor does not
// have: it was dropped (too large, idle, aborted) or lost when the actor
// stopped (idle, or its partition moved). Only the client can repeat the
// upload, so it is told to retry.
func errNoSession() *MatrixError {
	e := Errorf(http.StatusServiceUnavailable, "M_UNAVAILABLE", "the upload was interrupted; upload again")
	e.Extra = map[string]any{"retry_after_ms": 1000}
	return e
}

// appendChunk writes one chunk of a session. A chunk at the wrong offset
// (a repeat or a gap) fails rather than corrupt the file.
func (a *mediaActor) appendChunk(m *pb.MediaAppend) (*pb.MediaAppendReply, error) {
	s := a.sessions[m.UploadId]
	if s == nil {
		return nil, errNoSession()
	}
	if m.Abort {
		s.drop()
		delete(a.sessions, m.UploadId)
		return &pb.MediaAppendReply{Size: s.size}, nil
	}
	switch {
	case len(m.Data) > MediaChunkMax:
		return nil, ErrInvalidParam("chunk larger than %d bytes", MediaChunkMax)
	case m.Offset != s.size:
		return nil, ErrInvalidParam("chunk at offset %d, the upload has %d bytes", m.Offset, s.size)
	case s.size+int64(len(m.Data)) > s.limit:
		s.drop()
		delete(a.sessions, m.UploadId)
		return nil, errMediaTooLarge(s.limit)
	}
	if _, err := s.f.Write(m.Data); err != nil {
		s.drop()
		delete(a.sessions, m.UploadId)
		return nil, fmt.Errorf("media %s: stage chunk: %w", a.env.Identity, err)
	}
	s.size += int64(len(m.Data))
	s.lastUsed = a.env.Now()
	return &pb.MediaAppendReply{Size: s.size}, nil
}

// commitSession turns a session's commit into a local one: the staged file
// is closed and handed to commit, which adopts or removes it.
func (a *mediaActor) commitSession(m *pb.MediaCommit) (*pb.MediaCommitReply, error) {
	s := a.sessions[m.UploadId]
	if s == nil {
		return nil, errNoSession()
	}
	delete(a.sessions, m.UploadId)
	if s.user != m.UserId || s.mediaID != m.MediaId {
		s.drop()
		return nil, ErrForbidden("not your upload session")
	}
	if err := s.f.Close(); err != nil {
		_ = os.Remove(s.f.Name())
		return nil, fmt.Errorf("media %s: stage: %w", a.env.Identity, err)
	}
	return a.commit(&pb.MediaCommit{Server: m.Server, OwnerKey: m.OwnerKey, UserId: m.UserId, MediaId: m.MediaId,
		StagedPath: s.f.Name(), ContentType: m.ContentType, Filename: m.Filename, Limits: m.Limits})
}

// dropSessions ends every session: the actor is stopping, and the files
// would only wait for the staging sweep.
func (a *mediaActor) dropSessions() {
	for id, s := range a.sessions {
		s.drop()
		delete(a.sessions, id)
	}
}

// read serves one chunk of a blob of this actor's partition.
func (a *mediaActor) read(m *pb.MediaRead) (*pb.MediaChunk, error) {
	if !storage.ValidBlobSum(m.Blob) || m.Offset < 0 || m.Length <= 0 || m.Length > MediaChunkMax {
		return nil, ErrInvalidParam("bad media read")
	}
	f, err := os.Open(a.blobs.Path(m.Blob))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errMediaNotFound()
	}
	if err != nil {
		return nil, fmt.Errorf("media %s: read blob: %w", a.env.Identity, err)
	}
	defer f.Close()
	buf := make([]byte, m.Length)
	n, err := f.ReadAt(buf, m.Offset)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("media %s: read blob: %w", a.env.Identity, err)
	}
	return &pb.MediaChunk{Data: buf[:n]}, nil
}
