package gateway

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// The content repository (client-server API "Content repository", MSC3916
// authenticated media, MSC4189 guest access).
//
// Media records, quotas and pending async uploads belong to media actors,
// one per uploading user (see actors/media.go). Media bytes are the one
// thing the gateway touches outside actor messages, as DESIGN.md allows
// ("blobs as files beside the partition"): an upload is streamed into the
// staging directory the user's media actor names and only its path is handed
// to the actor, which hashes and adopts it; a download is served from the
// blob file whose path the actor returns. Neither direction holds a file in
// memory. That needs the actor's partition on this node; anywhere else the
// bytes go through the actor in chunks (client_media_remote.go).

// Defaults of MediaConfig.
const (
	DefaultMaxUploadBytes      = 50 << 20
	DefaultMediaQuotaBytes     = 4 << 30
	DefaultMaxPendingUploads   = 10
	DefaultUnusedMediaExpiry   = 24 * time.Hour
	DefaultMediaDownloadWait   = 20 * time.Second
	maxMediaDownloadWait       = 60 * time.Second
	maxMediaFilename           = 255
	maxMediaContentType        = 255
	maxThumbnailDimension      = 10000
	mediaUploadReadTimeout     = 30 * time.Minute
	mediaContentSecurityPolicy = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';"
)

// MediaConfig bounds the content repository. Zero fields take the defaults.
type MediaConfig struct {
	// MaxUploadBytes is the largest file a user may upload (m.upload.size).
	MaxUploadBytes int64
	// QuotaBytes is how many bytes of media each user may store; every
	// upload is charged at least 4 KiB. Negative: no quota.
	QuotaBytes int64
	// MaxPendingUploads bounds the created, not yet uploaded media IDs of
	// one user (POST /_matrix/media/v1/create).
	MaxPendingUploads int
	// UnusedExpiry is how long a created media ID waits for its upload.
	UnusedExpiry time.Duration
	// MaxThumbnailPixels bounds the images decoded for thumbnails
	// (actors.DefaultThumbnailMaxPixels when zero).
	MaxThumbnailPixels int64
	// UnauthenticatedUntil freezes the deprecated unauthenticated
	// /_matrix/media/v3/download and /thumbnail endpoints (MSC3916): they
	// serve only media created before this instant. The zero value freezes
	// everything, so all of shoal's media needs an access token.
	UnauthenticatedUntil time.Time
	// Preview configures /preview_url.
	Preview PreviewConfig
}

func (c MediaConfig) withDefaults() MediaConfig {
	if c.MaxUploadBytes <= 0 {
		c.MaxUploadBytes = DefaultMaxUploadBytes
	}
	if c.QuotaBytes == 0 {
		c.QuotaBytes = DefaultMediaQuotaBytes
	}
	if c.MaxPendingUploads <= 0 {
		c.MaxPendingUploads = DefaultMaxPendingUploads
	}
	if c.UnusedExpiry <= 0 {
		c.UnusedExpiry = DefaultUnusedMediaExpiry
	}
	if c.MaxThumbnailPixels <= 0 {
		c.MaxThumbnailPixels = actors.DefaultThumbnailMaxPixels
	}
	c.Preview = c.Preview.withDefaults()
	return c
}

func (s *Server) mediaConfig() MediaConfig { return s.cfg.Media.withDefaults() }

func (s *Server) mediaLimits() *pb.MediaLimits {
	c := s.mediaConfig()
	return &pb.MediaLimits{MaxUpload: c.MaxUploadBytes, Quota: max(c.QuotaBytes, 0),
		MaxPending: int32(c.MaxPendingUploads), UnusedExpiryMs: c.UnusedExpiry.Milliseconds()}
}

func (s *Server) registerMedia() {
	s.handle("POST /_matrix/media/v3/upload", s.authed(s.handleMediaUpload))
	s.handle("PUT /_matrix/media/v3/upload/{serverName}/{mediaId}", s.authed(s.handleMediaUpload))
	s.handle("POST /_matrix/media/v1/create", s.authed(s.handleMediaCreate))

	s.handle("GET /_matrix/client/v1/media/download/{serverName}/{mediaId}", s.authed(s.handleMediaDownloadAuthed))
	s.handle("GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}", s.authed(s.handleMediaDownloadAuthed))
	s.handle("GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}", s.authed(s.handleMediaThumbnailAuthed))
	s.handle("GET /_matrix/client/v1/media/config", s.authed(s.handleMediaConfig))
	s.handle("GET /_matrix/client/v1/media/preview_url", s.authed(s.handlePreviewURL))

	// Deprecated (MSC3916): frozen downloads, and the two endpoints that
	// always needed an access token.
	s.handle("GET /_matrix/media/v3/download/{serverName}/{mediaId}", s.handleMediaDownloadLegacy)
	s.handle("GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}", s.handleMediaDownloadLegacy)
	s.handle("GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}", s.handleMediaThumbnailLegacy)
	s.handle("GET /_matrix/media/v3/config", s.authed(s.handleMediaConfig))
	s.handle("GET /_matrix/media/v3/preview_url", s.authed(s.handlePreviewURL))
}

// mediaBodyLimit is the body limit of a request: uploads may carry up to
// MaxUploadBytes, every other request the listener's MaxBodyBytes.
func (s *Server) mediaBodyLimit(r *http.Request) int64 {
	if (r.Method == http.MethodPost || r.Method == http.MethodPut) &&
		strings.HasPrefix(r.URL.Path, "/_matrix/media/v3/upload") {
		return max(s.mediaConfig().MaxUploadBytes, s.cfg.MaxBodyBytes)
	}
	return s.fedBodyLimit(r)
}

// maxTransactionBytes bounds a federation transaction's body: 50 PDUs of up
// to 64 KiB and 100 EDUs fit, far more than the client API's limit.
const maxTransactionBytes = 8 << 20

// fedBodyLimit is the body limit of a request: transactions (PUT
// /_matrix/federation/v1/send/…) may be larger than other requests.
func (s *Server) fedBodyLimit(r *http.Request) int64 {
	if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") {
		return max(maxTransactionBytes, s.cfg.MaxBodyBytes)
	}
	return s.cfg.MaxBodyBytes
}

// mediaOwnerKey is the key of userID's media actor: a keyed hash of the
// user ID under a secret derived from the server's signing key, so media IDs
// route to their uploader's actor without revealing who that is (two media
// IDs only show that they share an uploader). A new signing key gives a user
// a new actor for new uploads; old IDs keep routing by the key they carry.
func (s *Server) mediaOwnerKey(userID string) string {
	k := sha256.Sum256(append([]byte("shoal media owner key\x00"), s.server.PrivateKey.Seed()...))
	mac := hmac.New(sha256.New, k[:])
	mac.Write([]byte(userID))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil)[:actors.MediaOwnerKeyLen*3/4])
}

// validMediaID accepts the media IDs shoal makes; anything else cannot be
// ours (and the spec limits media IDs to A-Za-z0-9_-).
func validMediaID(id string) bool {
	if len(id) != actors.MediaIDLen {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// isGuest reports whether userID is a guest's: guests get numeric
// localparts, which registration keeps for them.
func isGuest(userID string) bool {
	local, _, _ := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	if local == "" {
		return false
	}
	for _, c := range local {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

var errGuestMedia = errStatus(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "guests cannot upload media")

// localMedia checks the {serverName}/{mediaId} of a request and returns the
// media ID. Remote media would be fetched over federation, which shoal does
// not speak yet: it is not found.
func (s *Server) localMedia(r *http.Request) (string, error) {
	server, mediaID := r.PathValue("serverName"), r.PathValue("mediaId")
	if server != s.cfg.ServerName || !validMediaID(mediaID) {
		return "", actors.ErrNotFound("media not found")
	}
	return mediaID, nil
}

func mediaFilename(r *http.Request) (string, error) {
	name := r.URL.Query().Get("filename")
	if len(name) > maxMediaFilename || !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl) {
		return "", actors.ErrInvalidParam("filename must be valid UTF-8 without control characters, at most %d bytes", maxMediaFilename)
	}
	return name, nil
}

func mediaContentType(r *http.Request) string {
	ct := r.Header.Get("Content-Type")
	if ct == "" || len(ct) > maxMediaContentType {
		return "application/octet-stream"
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return "application/octet-stream"
	}
	return mime.FormatMediaType(mt, params)
}

// handleMediaUpload serves POST /upload (a new media ID) and PUT
// /upload/{serverName}/{mediaId} (the content of a created ID).
func (s *Server) handleMediaUpload(w http.ResponseWriter, r *http.Request, sess *Session) {
	if isGuest(sess.UserID) {
		writeError(w, r, errGuestMedia)
		return
	}
	mediaID := ""
	if r.Method == http.MethodPut {
		var err error
		if mediaID, err = s.localMedia(r); err != nil {
			writeError(w, r, actors.ErrNotFound("unknown media ID"))
			return
		}
		if mediaID[:actors.MediaOwnerKeyLen] != s.mediaOwnerKey(sess.UserID) {
			// Created by another user (or not at all): only its creator
			// may tell which.
			writeError(w, r, actors.ErrForbidden("this media ID was not created by you"))
			return
		}
	}
	filename, err := mediaFilename(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	lim := s.mediaLimits()
	if r.ContentLength > lim.MaxUpload {
		writeError(w, r, errStatus(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "cannot upload files larger than "+strconv.FormatInt(lim.MaxUpload, 10)+" bytes"))
		return
	}
	owner := s.mediaOwnerKey(sess.UserID)
	// The actor on another node: stream the bytes to it (client_media_remote.go).
	remote := !s.mediaLocal(owner)
	res, err := s.router.Request(r.Context(), &pb.MediaBegin{Server: s.cfg.ServerName, OwnerKey: owner,
		UserId: sess.UserID, MediaId: mediaID, SizeHint: r.ContentLength, Limits: lim, Remote: remote})
	if err != nil {
		writeError(w, r, err)
		return
	}
	begin, ok := res.(*pb.MediaBeginReply)
	if !ok {
		writeError(w, r, errors.New("media: unexpected begin reply"))
		return
	}
	// A large upload may take longer than the listener's read timeout.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(mediaUploadReadTimeout))
	commitMsg := &pb.MediaCommit{Server: s.cfg.ServerName, OwnerKey: owner,
		UserId: sess.UserID, MediaId: mediaID, ContentType: mediaContentType(r),
		Filename: filename, Limits: lim}
	if begin.UploadId != "" {
		if err := s.streamUpload(r.Context(), owner, begin.UploadId, r.Body, lim.MaxUpload); err != nil {
			writeError(w, r, err)
			return
		}
		commitMsg.UploadId = begin.UploadId
	} else {
		staged, err := stageUpload(begin.StagingDir, r.Body, lim.MaxUpload)
		if err != nil {
			writeError(w, r, err)
			return
		}
		commitMsg.StagedPath = staged
	}
	// From here the staged file is the actor's: it adopts or removes it.
	res, err = s.router.Request(r.Context(), commitMsg)
	if err != nil {
		writeError(w, r, err)
		return
	}
	commit, ok := res.(*pb.MediaCommitReply)
	if !ok {
		writeError(w, r, errors.New("media: unexpected commit reply"))
		return
	}
	if mediaID != "" {
		writeJSON(w, http.StatusOK, map[string]any{})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"content_uri": "mxc://" + s.cfg.ServerName + "/" + commit.MediaId})
}

// stageUpload copies body into a new file of dir, refusing more than limit
// bytes, and returns the file's path.
func stageUpload(dir string, body io.Reader, limit int64) (string, error) {
	f, err := storage.CreateStaged(dir)
	if err != nil {
		return "", err
	}
	n, err := io.Copy(f, io.LimitReader(body, limit+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n > limit {
		err = errStatus(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "cannot upload files larger than "+strconv.FormatInt(limit, 10)+" bytes")
	}
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		err = errTooLarge
	} else if err != nil && !isMatrixError(err) {
		if _, ok := err.(*os.PathError); !ok {
			err = errStatus(http.StatusBadRequest, "M_BAD_JSON", "could not read the upload")
		}
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

func isMatrixError(err error) bool {
	var me *actors.MatrixError
	return errors.As(err, &me)
}

func (s *Server) handleMediaCreate(w http.ResponseWriter, r *http.Request, sess *Session) {
	if isGuest(sess.UserID) {
		writeError(w, r, errGuestMedia)
		return
	}
	res, err := s.router.Request(r.Context(), &pb.MediaCreate{Server: s.cfg.ServerName,
		OwnerKey: s.mediaOwnerKey(sess.UserID), UserId: sess.UserID, Limits: s.mediaLimits()})
	if err != nil {
		writeError(w, r, err)
		return
	}
	rep, ok := res.(*pb.MediaCreateReply)
	if !ok {
		writeError(w, r, errors.New("media: unexpected create reply"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"content_uri":       "mxc://" + s.cfg.ServerName + "/" + rep.MediaId,
		"unused_expires_at": rep.UnusedExpiresAt,
	})
}

func (s *Server) handleMediaConfig(w http.ResponseWriter, r *http.Request, _ *Session) {
	writeJSON(w, http.StatusOK, map[string]any{"m.upload.size": s.mediaConfig().MaxUploadBytes})
}

// downloadWait is the request's timeout_ms: how long to wait for a pending
// async upload (default 20 s, at most 60 s).
func downloadWait(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("timeout_ms")
	if v == "" {
		return DefaultMediaDownloadWait, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms < 0 {
		return 0, actors.ErrInvalidParam("timeout_ms must be a non-negative integer")
	}
	return min(time.Duration(ms)*time.Millisecond, maxMediaDownloadWait), nil
}

// awaitMedia asks the media actor with msg until the media is uploaded or
// wait has passed (504 M_NOT_YET_UPLOADED). Pending uploads are rare and
// short-lived, so the gateway polls with a growing interval rather than
// parking a request inside the actor.
func (s *Server) awaitMedia(ctx context.Context, msg pb.Targeted, wait time.Duration) (*pb.MediaInfo, error) {
	deadline := time.Now().Add(wait)
	interval := 50 * time.Millisecond
	for {
		res, err := s.router.Request(ctx, msg)
		if err != nil {
			return nil, err
		}
		info, ok := res.(*pb.MediaInfo)
		if !ok {
			return nil, errors.New("media: unexpected reply")
		}
		if info.Uploaded {
			return info, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, errStatus(http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED", "content has not yet been uploaded")
		}
		t := time.NewTimer(min(interval, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-s.stopCtx.Done():
			t.Stop()
			return nil, errStatus(http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED", "content has not yet been uploaded")
		case <-t.C:
		}
		interval = min(2*interval, time.Second)
	}
}

func (s *Server) handleMediaDownloadAuthed(w http.ResponseWriter, r *http.Request, _ *Session) {
	s.serveDownload(w, r, false)
}

func (s *Server) handleMediaDownloadLegacy(w http.ResponseWriter, r *http.Request) {
	s.serveDownload(w, r, true)
}

func (s *Server) handleMediaThumbnailAuthed(w http.ResponseWriter, r *http.Request, _ *Session) {
	s.serveThumbnail(w, r, false)
}

func (s *Server) handleMediaThumbnailLegacy(w http.ResponseWriter, r *http.Request) {
	s.serveThumbnail(w, r, true)
}

// frozen reports whether legacy endpoints must not serve media created at
// createdMs (MSC3916's freeze).
func (s *Server) frozen(createdMs int64) bool {
	until := s.cfg.Media.UnauthenticatedUntil
	return until.IsZero() || createdMs >= until.UnixMilli()
}

func (s *Server) serveDownload(w http.ResponseWriter, r *http.Request, legacy bool) {
	if !legacy && r.PathValue("serverName") != s.cfg.ServerName {
		s.serveRemoteMedia(w, r, false) // federation_media_remote.go
		return
	}
	if legacy && s.cfg.Media.UnauthenticatedUntil.IsZero() {
		writeError(w, r, actors.ErrNotFound("media not found"))
		return
	}
	mediaID, err := s.localMedia(r)
	if err == nil {
		var wait time.Duration
		if wait, err = downloadWait(r); err == nil {
			var info *pb.MediaInfo
			info, err = s.awaitMedia(r.Context(), &pb.MediaGet{Server: s.cfg.ServerName,
				OwnerKey: mediaID[:actors.MediaOwnerKeyLen], MediaId: mediaID}, wait)
			if err == nil {
				if legacy && s.frozen(info.CreatedMs) {
					err = actors.ErrNotFound("media not found")
				} else {
					name := info.Filename
					if n := r.PathValue("fileName"); n != "" {
						name = n
					}
					s.serveBlob(w, r, mediaID[:actors.MediaOwnerKeyLen], info, name, legacy)
					return
				}
			}
		}
	}
	writeError(w, r, err)
}

func (s *Server) serveThumbnail(w http.ResponseWriter, r *http.Request, legacy bool) {
	if !legacy && r.PathValue("serverName") != s.cfg.ServerName {
		s.serveRemoteMedia(w, r, true) // federation_media_remote.go
		return
	}
	mediaID, err := s.localMedia(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	width, err1 := strconv.Atoi(q.Get("width"))
	height, err2 := strconv.Atoi(q.Get("height"))
	if err1 != nil || err2 != nil || width <= 0 || height <= 0 || width > maxThumbnailDimension || height > maxThumbnailDimension {
		writeError(w, r, actors.ErrInvalidParam("width and height must be integers from 1 to %d", maxThumbnailDimension))
		return
	}
	method := q.Get("method")
	switch method {
	case "":
		method = "scale"
	case "crop", "scale":
	default:
		writeError(w, r, actors.ErrInvalidParam("method must be crop or scale"))
		return
	}
	if a := q.Get("animated"); a != "" && a != "true" && a != "false" {
		writeError(w, r, actors.ErrInvalidParam("animated must be true or false"))
		return
	}
	wait, err := downloadWait(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if legacy {
		// Check the freeze before making anyone a thumbnail: these
		// requests come without an access token.
		if s.cfg.Media.UnauthenticatedUntil.IsZero() {
			writeError(w, r, actors.ErrNotFound("media not found"))
			return
		}
		orig, err := s.awaitMedia(r.Context(), &pb.MediaGet{Server: s.cfg.ServerName,
			OwnerKey: mediaID[:actors.MediaOwnerKeyLen], MediaId: mediaID}, wait)
		if err == nil && s.frozen(orig.CreatedMs) {
			err = actors.ErrNotFound("media not found")
		}
		if err != nil {
			writeError(w, r, err)
			return
		}
	}
	info, err := s.awaitMedia(r.Context(), &pb.MediaThumbnail{Server: s.cfg.ServerName,
		OwnerKey: mediaID[:actors.MediaOwnerKeyLen], MediaId: mediaID, Width: int32(width), Height: int32(height),
		Method: method, MaxPixels: s.mediaConfig().MaxThumbnailPixels}, wait)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.serveBlob(w, r, mediaID[:actors.MediaOwnerKeyLen], info, "", legacy)
}

// inlineTypes are the content types the spec lets servers serve with
// Content-Disposition: inline; everything else is an attachment.
var inlineTypes = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true, "application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true, "image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true, "audio/ogg": true,
	"audio/wave": true, "audio/wav": true, "audio/x-wav": true, "audio/x-pn-wav": true, "audio/flac": true, "audio/x-flac": true,
}

// serveBlob streams the blob of info (of the media actor of owner) with the
// headers the spec asks for (ranges and conditional requests through
// http.ServeContent).
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, owner string, info *pb.MediaInfo, filename string, legacy bool) {
	f, err := s.openBlob(r.Context(), owner, info)
	if err != nil {
		writeError(w, r, err)
		return
	}
	defer f.Close()
	ct, cd := mediaHeaders(info.ContentType, filename)
	h := w.Header()
	h.Set("Content-Type", ct)
	h.Set("Content-Disposition", cd)
	h.Set("Content-Security-Policy", mediaContentSecurityPolicy)
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	h.Set("X-Content-Type-Options", "nosniff")
	if legacy {
		h.Set("Cache-Control", "public, max-age=86400, immutable")
	} else {
		h.Set("Cache-Control", "private, max-age=86400, immutable")
	}
	http.ServeContent(w, r, "", time.UnixMilli(info.CreatedMs), f)
}
