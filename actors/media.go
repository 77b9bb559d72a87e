package actors

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// Media IDs are the owner key of their media actor followed by 24 random
// URL-safe base64 characters (144 bits): the key routes a download to the
// actor that holds the record, the random part makes IDs unguessable.
const (
	// MediaOwnerKeyLen is the length of an owner key (see the gateway's
	// mediaOwnerKey).
	MediaOwnerKeyLen = 12
	mediaRandomLen   = 24
	// MediaIDLen is the length of every media ID shoal makes.
	MediaIDLen = MediaOwnerKeyLen + mediaRandomLen
	// mediaMinCharge is the least an upload costs of its owner's quota, so
	// that a quota also bounds the number of (tiny) records a user keeps.
	mediaMinCharge = 4096
	// stagingMaxAge is how old a staged upload must be before an
	// activation sweeps it away as abandoned.
	stagingMaxAge = 6 * time.Hour
)

// mediaActor owns the media of one uploading user (identity
// media/<server>/<owner key>, the key derived from the user ID): their media
// records, their quota usage and their pending async uploads. One actor per
// user makes the quota and the pending-upload limit a single writer's
// decision; routing by the key in every media ID lets any download reach
// the record without an index. Blob bytes are files beside the partition
// (storage.Blobs), content-addressed and so shared by identical uploads.
//
// Making a thumbnail (decode, scale, encode) runs in this actor: it
// serialises the thumbnails of one user's media, and each is made once and
// then kept as a blob.
type mediaActor struct {
	env      *Env
	ownerKey string
	blobs    *storage.Blobs
	loaded   bool
	state    storage.MediaOwner
	// sessions are the uploads streamed in from other nodes (see
	// media_remote.go), by upload ID; only in memory.
	sessions map[string]*uploadSession
}

// NewMedia makes the media actor of one uploader.
func NewMedia(env *Env) actor.Actor {
	key := env.Identity[strings.LastIndexByte(env.Identity, '/')+1:]
	return &mediaActor{env: env, ownerKey: key, blobs: storage.BlobsOf(env.Partition)}
}

func (a *mediaActor) Receive(ctx actor.Context) {
	var res any
	var err error
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if a.env.IdleTimeout > 0 {
			ctx.SetReceiveTimeout(a.env.IdleTimeout)
		}
		a.blobs.SweepStaging(stagingMaxAge, a.env.Now())
		return
	case *actor.ReceiveTimeout:
		// Everything is in storage but open upload sessions, which have
		// had no chunk for the whole timeout: nothing is lost by stopping.
		a.dropSessions()
		ctx.Send(ctx.Parent(), &pb.Passivate{Identity: a.env.Identity})
		return
	case *pb.MediaBegin:
		res, err = a.begin(m)
	case *actor.Stopping:
		a.dropSessions()
		return
	case *pb.MediaCommit:
		if m.UploadId != "" {
			res, err = a.commitSession(m)
		} else {
			res, err = a.commit(m)
		}
	case *pb.MediaAppend:
		res, err = a.appendChunk(m)
	case *pb.MediaRead:
		res, err = a.read(m)
	case *pb.MediaCreate:
		res, err = a.create(m)
	case *pb.MediaGet:
		res, err = a.get(m.MediaId)
	case *pb.MediaThumbnail:
		res, err = a.thumbnail(m)
	default:
		return
	}
	if ctx.Sender() == nil {
		return
	}
	if err != nil {
		var me *MatrixError
		if !errors.As(err, &me) {
			a.env.Log.Error("media: request failed", slog.String("actor", a.env.Identity), slog.Any("err", err))
		}
		ctx.Respond(ToPB(err))
		return
	}
	ctx.Respond(res)
}

func (a *mediaActor) load() error {
	if a.loaded {
		return nil
	}
	err := a.env.Partition.View(func(tx *bbolt.Tx) error {
		st, err := storage.MediaOwnerOf(tx, a.env.Identity)
		a.state = st
		return err
	})
	if err != nil {
		return fmt.Errorf("media %s: load: %w", a.env.Identity, err)
	}
	if a.state.Pending == nil {
		a.state.Pending = map[string]int64{}
	}
	a.loaded = true
	return nil
}

func errMediaNotFound() *MatrixError { return ErrNotFound("media not found") }

func errMediaTooLarge(limit int64) *MatrixError {
	return Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "cannot upload files larger than %d bytes", limit)
}

// The spec's content repository answers an exhausted quota with 403
// M_FORBIDDEN ("The user has reached a quota for uploaded content").
func errQuota() *MatrixError {
	return ErrForbidden("this upload would exceed your media storage quota")
}

func charge(size int64) int64 { return max(size, mediaMinCharge) }

// record reads one of this actor's media records.
func (a *mediaActor) record(mediaID string) (storage.MediaRecord, bool, error) {
	if !a.ownsID(mediaID) {
		return storage.MediaRecord{}, false, nil
	}
	var rec storage.MediaRecord
	var ok bool
	err := a.env.Partition.View(func(tx *bbolt.Tx) error {
		var err error
		rec, ok, err = storage.MediaRecordOf(tx, a.env.Identity, mediaID)
		return err
	})
	if err != nil {
		return rec, false, fmt.Errorf("media %s: read %s: %w", a.env.Identity, mediaID, err)
	}
	return rec, ok, nil
}

func (a *mediaActor) ownsID(mediaID string) bool {
	return len(mediaID) == MediaIDLen && strings.HasPrefix(mediaID, a.ownerKey)
}

// pendingFor checks that mediaID is a created, unexpired, not yet uploaded
// ID of user.
func (a *mediaActor) pendingFor(mediaID, user string) error {
	rec, ok, err := a.record(mediaID)
	if err != nil {
		return err
	}
	switch {
	case !ok:
		return ErrNotFound("unknown media ID")
	case rec.Uploaded():
		return Errorf(http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA", "media already uploaded")
	case rec.ExpiresMs <= a.env.NowMillis():
		return ErrNotFound("media ID expired")
	case rec.Owner != user:
		return ErrForbidden("this media ID was created by another user")
	}
	return nil
}

func (a *mediaActor) begin(m *pb.MediaBegin) (*pb.MediaBeginReply, error) {
	if err := a.load(); err != nil {
		return nil, err
	}
	lim := m.GetLimits()
	if m.SizeHint > lim.GetMaxUpload() {
		return nil, errMediaTooLarge(lim.GetMaxUpload())
	}
	if q := lim.GetQuota(); q > 0 && a.state.Usage+charge(max(m.SizeHint, 0)) > q {
		return nil, errQuota()
	}
	if m.MediaId != "" {
		if err := a.pendingFor(m.MediaId, m.UserId); err != nil {
			return nil, err
		}
	}
	dir, err := a.blobs.StagingDir()
	if err != nil {
		return nil, err
	}
	if m.Remote {
		return a.openSession(m, dir)
	}
	return &pb.MediaBeginReply{StagingDir: dir}, nil
}

func (a *mediaActor) commit(m *pb.MediaCommit) (*pb.MediaCommitReply, error) {
	if !a.blobs.IsStaged(m.StagedPath) {
		return nil, ErrInvalidParam("not a staged upload")
	}
	adopted := false
	defer func() {
		if !adopted {
			_ = os.Remove(m.StagedPath)
		}
	}()
	if err := a.load(); err != nil {
		return nil, err
	}
	lim := m.GetLimits()
	sum, size, err := storage.HashFile(m.StagedPath)
	if err != nil {
		return nil, fmt.Errorf("media %s: hash upload: %w", a.env.Identity, err)
	}
	if size > lim.GetMaxUpload() {
		return nil, errMediaTooLarge(lim.GetMaxUpload())
	}
	if q := lim.GetQuota(); q > 0 && a.state.Usage+charge(size) > q {
		return nil, errQuota()
	}
	mediaID := m.MediaId
	now := a.env.NowMillis()
	rec := storage.MediaRecord{Owner: m.UserId, CreatedMs: now}
	if mediaID != "" {
		if err := a.pendingFor(mediaID, m.UserId); err != nil {
			return nil, err
		}
		old, _, err := a.record(mediaID)
		if err != nil {
			return nil, err
		}
		rec.CreatedMs = old.CreatedMs
	} else {
		mediaID = a.newID()
	}
	if _, _, err := a.blobs.Adopt(m.StagedPath, sum); err != nil {
		return nil, fmt.Errorf("media %s: %w", a.env.Identity, err)
	}
	adopted = true
	rec.SHA256, rec.Size, rec.UploadedMs = sum, size, now
	rec.ContentType, rec.Filename = m.ContentType, m.Filename
	next := a.cloneState()
	next.Usage += charge(size)
	next.Count++
	delete(next.Pending, mediaID)
	identity := a.env.Identity
	if err := a.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		if err := storage.PutMediaRecord(tx, identity, mediaID, rec); err != nil {
			return err
		}
		return storage.PutMediaOwner(tx, identity, next)
	}); err != nil {
		// The blob stays: unreferenced, it costs space until a later
		// upload of the same bytes uses it again.
		return nil, fmt.Errorf("media %s: store: %w", a.env.Identity, err)
	}
	a.state = next
	return &pb.MediaCommitReply{MediaId: mediaID}, nil
}

func (a *mediaActor) cloneState() storage.MediaOwner {
	st := a.state
	st.Pending = make(map[string]int64, len(a.state.Pending))
	for k, v := range a.state.Pending {
		st.Pending[k] = v
	}
	return st
}

func (a *mediaActor) newID() string {
	b := make([]byte, mediaRandomLen*3/4)
	if _, err := rand.Read(b); err != nil {
		panic("media: no randomness: " + err.Error())
	}
	return a.ownerKey + base64.RawURLEncoding.EncodeToString(b)
}

func (a *mediaActor) create(m *pb.MediaCreate) (*pb.MediaCreateReply, error) {
	if err := a.load(); err != nil {
		return nil, err
	}
	lim := m.GetLimits()
	now := a.env.NowMillis()
	next := a.cloneState()
	var expired []string
	earliest := int64(0)
	for id, exp := range next.Pending {
		if exp <= now {
			expired = append(expired, id)
			delete(next.Pending, id)
		} else if earliest == 0 || exp < earliest {
			earliest = exp
		}
	}
	if len(next.Pending) >= int(lim.GetMaxPending()) {
		e := Errorf(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "too many pending uploads: upload to or let expire the media IDs you created")
		e.Extra = map[string]any{"retry_after_ms": max(earliest-now, 1000)}
		if len(expired) > 0 {
			// Forget the expired ones anyway; the reply stays the same.
			_ = a.persistPending(next, expired, "", storage.MediaRecord{})
		}
		return nil, e
	}
	mediaID := a.newID()
	exp := now + lim.GetUnusedExpiryMs()
	next.Pending[mediaID] = exp
	rec := storage.MediaRecord{Owner: m.UserId, CreatedMs: now, ExpiresMs: exp}
	if err := a.persistPending(next, expired, mediaID, rec); err != nil {
		return nil, err
	}
	return &pb.MediaCreateReply{MediaId: mediaID, UnusedExpiresAt: exp}, nil
}

// persistPending stores next as the accounting, deletes the records of the
// expired pending IDs and, when mediaID is set, writes its record.
func (a *mediaActor) persistPending(next storage.MediaOwner, expired []string, mediaID string, rec storage.MediaRecord) error {
	identity := a.env.Identity
	if err := a.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		for _, id := range expired {
			if err := storage.DeleteMediaRecord(tx, identity, id); err != nil {
				return err
			}
		}
		if mediaID != "" {
			if err := storage.PutMediaRecord(tx, identity, mediaID, rec); err != nil {
				return err
			}
		}
		return storage.PutMediaOwner(tx, identity, next)
	}); err != nil {
		return fmt.Errorf("media %s: store: %w", a.env.Identity, err)
	}
	a.state = next
	return nil
}

// lookup returns an uploaded record, or a MediaInfo saying it is pending.
func (a *mediaActor) lookup(mediaID string) (storage.MediaRecord, *pb.MediaInfo, error) {
	rec, ok, err := a.record(mediaID)
	if err != nil {
		return rec, nil, err
	}
	if !ok || (!rec.Uploaded() && rec.ExpiresMs <= a.env.NowMillis()) {
		return rec, nil, errMediaNotFound()
	}
	if !rec.Uploaded() {
		return rec, &pb.MediaInfo{CreatedMs: rec.CreatedMs}, nil
	}
	return rec, nil, nil
}

func (a *mediaActor) get(mediaID string) (*pb.MediaInfo, error) {
	rec, pending, err := a.lookup(mediaID)
	if err != nil || pending != nil {
		return pending, err
	}
	return &pb.MediaInfo{Path: a.blobs.Path(rec.SHA256), ContentType: rec.ContentType, Filename: rec.Filename,
		Size: rec.Size, CreatedMs: rec.CreatedMs, Uploaded: true, Blob: rec.SHA256}, nil
}

func (a *mediaActor) thumbnail(m *pb.MediaThumbnail) (*pb.MediaInfo, error) {
	rec, pending, err := a.lookup(m.MediaId)
	if err != nil || pending != nil {
		return pending, err
	}
	if m.Width <= 0 || m.Height <= 0 {
		return nil, ErrInvalidParam("width and height must be positive")
	}
	preset := pickThumbPreset(int(m.Width), int(m.Height), m.Method == "crop")
	key := preset.key()
	info := func(t storage.MediaThumb) *pb.MediaInfo {
		return &pb.MediaInfo{Path: a.blobs.Path(t.SHA256), ContentType: t.ContentType, Size: t.Size,
			CreatedMs: rec.CreatedMs, Uploaded: true, Blob: t.SHA256}
	}
	if t, ok := rec.Thumbs[key]; ok && a.blobs.Has(t.SHA256) {
		return info(t), nil
	}
	src := a.blobs.Path(rec.SHA256)
	staging, err := a.blobs.StagingDir()
	if err != nil {
		return nil, err
	}
	res, err := makeThumbnail(src, staging, preset, m.MaxPixels)
	if err != nil {
		return nil, err
	}
	if res.original {
		return &pb.MediaInfo{Path: src, ContentType: res.contentType, Size: rec.Size, CreatedMs: rec.CreatedMs, Uploaded: true, Blob: rec.SHA256}, nil
	}
	if _, _, err := a.blobs.Adopt(res.path, res.sum); err != nil {
		_ = os.Remove(res.path)
		return nil, fmt.Errorf("media %s: thumbnail: %w", a.env.Identity, err)
	}
	t := storage.MediaThumb{SHA256: res.sum, ContentType: res.contentType, Size: res.size, Width: res.width, Height: res.height}
	if rec.Thumbs == nil {
		rec.Thumbs = map[string]storage.MediaThumb{}
	}
	rec.Thumbs[key] = t
	identity, mediaID := a.env.Identity, m.MediaId
	if err := a.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		return storage.PutMediaRecord(tx, identity, mediaID, rec)
	}); err != nil {
		return nil, fmt.Errorf("media %s: store thumbnail: %w", a.env.Identity, err)
	}
	return info(t), nil
}
