package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/fedclient"
	"github.com/shoal-chat/shoal/storage"
)

// Remote media for local clients: a download or thumbnail of an mxc:// URI
// of another server is fetched from that server over federation (the
// authenticated /_matrix/federation/v1/media endpoints; the deprecated
// unauthenticated /_matrix/media/v3 ones only when the server does not know
// the new ones), kept, and served from then on without asking again.
//
// The bytes are kept like local uploads: a media record of a media actor,
// its blob beside the actor's partition. Each remote media item gets its own
// media actor (the owner key is derived from the mxc URI as a user's is from
// the user ID), which spreads a popular server's media over the
// partitions. Which local record holds mxc://server/id is a small
// cluster-wide index in the key/value store of a certs actor
// (certs/remotemedia-<server>): the media actor makes its own record IDs,
// so the index is what finds them again.

const (
	// maxRemoteMediaID bounds the media IDs asked of other servers (the
	// spec allows [A-Za-z0-9_-]; 255 is far beyond any server's IDs).
	maxRemoteMediaID = 255
	// maxMediaMetadata bounds the JSON metadata part of a multipart answer.
	maxMediaMetadata = 64 << 10
	// remoteMediaTransfer is how long a remote download may take beyond
	// the timeout_ms the remote may wait for a pending upload.
	remoteMediaTransfer = 2 * time.Minute
	// multipartOverhead is what the multipart framing may add to the
	// media's bytes (boundaries, part headers, metadata).
	multipartOverhead = 128 << 10
)

// remoteThumbPresets are the sizes remote thumbnails are asked for and kept
// in: a request is rounded up to one of them (as local thumbnails are), so
// one remote media item has a bounded number of cached thumbnails.
var remoteThumbPresets = []struct {
	w, h int
	crop bool
}{
	{32, 32, true}, {96, 96, true}, {320, 320, true}, {640, 640, true},
	{320, 240, false}, {640, 480, false}, {800, 600, false}, {1280, 960, false},
}

// roundThumb rounds tp up to a preset of its method (the largest when none
// is as large).
func roundThumb(tp thumbParams) thumbParams {
	crop := tp.method == "crop"
	out := tp
	for _, p := range remoteThumbPresets {
		if p.crop != crop {
			continue
		}
		out.width, out.height = p.w, p.h
		if p.w >= tp.width && p.h >= tp.height {
			break
		}
	}
	return out
}

// validRemoteMediaID accepts the media IDs the spec allows.
func validRemoteMediaID(id string) bool {
	if id == "" || len(id) > maxRemoteMediaID {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// remoteMediaEntry is an index entry: the media actor and record holding a
// remote item (or one of its thumbnails).
type remoteMediaEntry struct {
	Owner string `json:"owner"`
	ID    string `json:"id"`
}

func remoteMediaStore(server string) string { return "remotemedia-" + server }

func remoteMediaKey(mediaID string, thumb *thumbParams) string {
	if thumb == nil {
		return mediaID
	}
	anim := thumb.animated
	if anim == "" {
		anim = "default"
	}
	return fmt.Sprintf("%s/thumb/%dx%d/%s/%s", mediaID, thumb.width, thumb.height, thumb.method, anim)
}

// remoteMediaFlights joins concurrent fetches of the same item on one node:
// the first fetches, the others wait for it and then read the cache.
var remoteMediaFlights sync.Map // flight key → *remoteMediaFlight

type remoteMediaFlight struct {
	done chan struct{}
	err  error
}

// serveRemoteMedia serves GET /_matrix/client/v1/media/download and
// /thumbnail for a server name that is not this server's.
func (s *Server) serveRemoteMedia(w http.ResponseWriter, r *http.Request, thumbnail bool) {
	server, mediaID := r.PathValue("serverName"), r.PathValue("mediaId")
	if _, _, err := eventgraph.ParseServerName(server); err != nil || !validRemoteMediaID(mediaID) {
		writeError(w, r, actors.ErrNotFound("media not found"))
		return
	}
	var thumb *thumbParams
	if thumbnail {
		tp, err := parseThumbParams(r)
		if err != nil {
			writeError(w, r, err)
			return
		}
		tp = roundThumb(tp)
		thumb = &tp
	}
	wait, err := downloadWait(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	ent, info, err := s.cachedRemoteMedia(r.Context(), server, mediaID, thumb)
	if err == nil && info == nil {
		if err = s.fetchRemoteMediaOnce(r.Context(), server, mediaID, thumb, wait); err == nil {
			ent, info, err = s.cachedRemoteMedia(r.Context(), server, mediaID, thumb)
			if err == nil && info == nil {
				err = errStatus(http.StatusBadGateway, "M_UNKNOWN", "could not keep the media of "+server)
			}
		}
	}
	if err != nil {
		writeError(w, r, err)
		return
	}
	name := ""
	if !thumbnail {
		name = info.Filename
		if n := r.PathValue("fileName"); n != "" {
			name = n
		}
	}
	s.serveBlob(w, r, ent.Owner, info, name, false)
}

// cachedRemoteMedia looks the item up in the index and its record in the
// media actor; a nil info means it is not kept here (yet).
func (s *Server) cachedRemoteMedia(ctx context.Context, server, mediaID string, thumb *thumbParams) (remoteMediaEntry, *pb.MediaInfo, error) {
	var ent remoteMediaEntry
	res, err := s.router.Request(ctx, &pb.CertLoad{Store: remoteMediaStore(server), Key: remoteMediaKey(mediaID, thumb)})
	if err != nil {
		var me *actors.MatrixError
		if errors.As(err, &me) && me.Status == http.StatusNotFound {
			return ent, nil, nil
		}
		return ent, nil, fmt.Errorf("remote media index: %w", err)
	}
	rep, ok := res.(*pb.CertLoadReply)
	if !ok {
		return ent, nil, errors.New("remote media index: unexpected reply")
	}
	if json.Unmarshal(rep.Value, &ent) != nil || ent.Owner == "" || ent.ID == "" {
		return ent, nil, nil
	}
	res, err = s.router.Request(ctx, &pb.MediaGet{Server: s.cfg.ServerName, OwnerKey: ent.Owner, MediaId: ent.ID})
	if err != nil {
		var me *actors.MatrixError
		if errors.As(err, &me) && me.Status == http.StatusNotFound {
			// The record went: fetch again.
			return ent, nil, nil
		}
		return ent, nil, err
	}
	info, ok := res.(*pb.MediaInfo)
	if !ok || !info.Uploaded {
		return ent, nil, nil
	}
	return ent, info, nil
}

// fetchRemoteMediaOnce fetches and keeps the item, or waits for the fetch
// of it another request of this node has under way.
func (s *Server) fetchRemoteMediaOnce(ctx context.Context, server, mediaID string, thumb *thumbParams, wait time.Duration) error {
	key := fmt.Sprintf("%p|%s|%s", s, server, remoteMediaKey(mediaID, thumb))
	fl := &remoteMediaFlight{done: make(chan struct{})}
	if prev, loaded := remoteMediaFlights.LoadOrStore(key, fl); loaded {
		other := prev.(*remoteMediaFlight)
		select {
		case <-other.done:
			return other.err
		case <-ctx.Done():
			return errStatus(http.StatusGatewayTimeout, "M_UNKNOWN", "timed out waiting for the media of "+server)
		}
	}
	// The fetch is not the requester's alone: it goes on (bounded by its
	// own timeout) if the requester gives up, so that the waiters get it.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wait+remoteMediaTransfer)
	defer cancel()
	stop := context.AfterFunc(s.stopCtx, cancel)
	defer stop()
	fl.err = s.fetchRemoteMedia(fctx, server, mediaID, thumb, wait)
	remoteMediaFlights.Delete(key)
	close(fl.done)
	return fl.err
}

// fetchRemoteMedia downloads the item from server and keeps it.
func (s *Server) fetchRemoteMedia(ctx context.Context, server, mediaID string, thumb *thumbParams, wait time.Duration) error {
	limit := s.mediaConfig().MaxUploadBytes
	q := url.Values{"timeout_ms": {strconv.FormatInt(wait.Milliseconds(), 10)}}
	uri := "/_matrix/federation/v1/media/download/" + url.PathEscape(mediaID)
	if thumb != nil {
		q.Set("width", strconv.Itoa(thumb.width))
		q.Set("height", strconv.Itoa(thumb.height))
		q.Set("method", thumb.method)
		if thumb.animated != "" {
			q.Set("animated", thumb.animated)
		}
		uri = "/_matrix/federation/v1/media/thumbnail/" + url.PathEscape(mediaID)
	}
	resp, err := s.fed.client.Stream(ctx, fedclient.Request{Method: http.MethodGet, Destination: server, Signed: true,
		URI: uri + "?" + q.Encode(), Limit: limit + multipartOverhead, Timeout: wait + remoteMediaTransfer})
	legacy := false
	if he := (*fedclient.HTTPError)(nil); errors.As(err, &he) && he.Status == http.StatusNotFound && he.ErrCode == "M_UNRECOGNIZED" {
		// A server older than Matrix 1.11: its unauthenticated endpoints,
		// restricted to its own media.
		legacy = true
		q.Set("allow_remote", "false")
		uri = "/_matrix/media/v3/download/" + url.PathEscape(server) + "/" + url.PathEscape(mediaID)
		if thumb != nil {
			uri = "/_matrix/media/v3/thumbnail/" + url.PathEscape(server) + "/" + url.PathEscape(mediaID)
		}
		resp, err = s.fed.client.Stream(ctx, fedclient.Request{Method: http.MethodGet, Destination: server,
			URI: uri + "?" + q.Encode(), Limit: limit, Timeout: wait + remoteMediaTransfer})
	}
	if err != nil {
		return s.remoteMediaError(ctx, server, err)
	}
	defer resp.Body.Close()
	var (
		body        io.Reader
		contentType string
		filename    string
	)
	if legacy {
		body, contentType, filename = resp.Body, resp.Header.Get("Content-Type"), dispositionFilename(resp.Header.Get("Content-Disposition"))
	} else {
		part, closeFn, err := s.mediaPart(ctx, resp, limit)
		if err != nil {
			return s.remoteMediaError(ctx, server, err)
		}
		defer closeFn()
		body, contentType, filename = part.body, part.contentType, part.filename
	}
	if thumb != nil {
		filename = ""
	}
	if ct, ok := cleanContentType(contentType); ok {
		contentType = ct
	} else {
		contentType = "application/octet-stream"
	}
	if len(filename) > maxMediaFilename || !validFilename(filename) {
		filename = ""
	}
	ent, err := s.keepRemoteMedia(ctx, server, mediaID, body, contentType, filename, limit)
	if err != nil {
		return s.remoteMediaError(ctx, server, err)
	}
	raw, _ := json.Marshal(ent)
	if _, err := s.router.Request(ctx, &pb.CertStore{Store: remoteMediaStore(server), Key: remoteMediaKey(mediaID, thumb), Value: raw}); err != nil {
		return fmt.Errorf("remote media index: %w", err)
	}
	return nil
}

// remotePart is the media part of a multipart answer.
type remotePart struct {
	body        io.Reader
	contentType string
	filename    string
}

// mediaPart reads a federation media answer up to its second part: the
// bytes, or (Location) a fetch of the URL it names. closeFn releases what
// a redirect opened.
func (s *Server) mediaPart(ctx context.Context, resp *fedclient.Response, limit int64) (remotePart, func(), error) {
	noop := func() {}
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || !strings.EqualFold(mt, "multipart/mixed") || params["boundary"] == "" {
		return remotePart{}, noop, errBadRemoteMedia("not a multipart/mixed answer")
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	meta, err := mr.NextPart()
	if err != nil {
		return remotePart{}, noop, errBadRemoteMedia("no metadata part")
	}
	raw, err := io.ReadAll(io.LimitReader(meta, maxMediaMetadata+1))
	var obj map[string]json.RawMessage
	if err != nil || len(raw) > maxMediaMetadata || json.Unmarshal(raw, &obj) != nil || obj == nil {
		return remotePart{}, noop, errBadRemoteMedia("the metadata part is not a JSON object")
	}
	part, err := mr.NextPart()
	if err != nil {
		return remotePart{}, noop, errBadRemoteMedia("no media part")
	}
	if loc := part.Header.Get("Location"); loc != "" {
		return s.followMediaLocation(ctx, loc, limit)
	}
	return remotePart{body: part, contentType: part.Header.Get("Content-Type"),
		filename: dispositionFilename(part.Header.Get("Content-Disposition"))}, noop, nil
}

// followMediaLocation fetches the media a remote server redirected to. The
// URL is any the remote chose, so it goes through the URL-preview client,
// which reaches public addresses only (and the networks the operator
// allowed previews to reach).
func (s *Server) followMediaLocation(ctx context.Context, loc string, limit int64) (remotePart, func(), error) {
	noop := func() {}
	u, err := url.Parse(loc)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return remotePart{}, noop, errBadRemoteMedia("bad Location")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return remotePart{}, noop, errBadRemoteMedia("bad Location")
	}
	pc := s.mediaConfig().Preview
	pc.Timeout = remoteMediaTransfer // media may be far larger than a page
	resp, err := s.previewClient(pc).Do(req)
	if err != nil {
		return remotePart{}, noop, fmt.Errorf("media Location: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return remotePart{}, noop, &fedclient.HTTPError{Status: resp.StatusCode}
	}
	return remotePart{body: io.LimitReader(resp.Body, limit+1), contentType: resp.Header.Get("Content-Type"),
		filename: dispositionFilename(resp.Header.Get("Content-Disposition"))}, func() { resp.Body.Close() }, nil
}

type badRemoteMedia struct{ msg string }

func (e *badRemoteMedia) Error() string { return "bad remote media answer: " + e.msg }

func errBadRemoteMedia(msg string) error { return &badRemoteMedia{msg} }

// remoteMediaError turns a failed fetch into the client's answer: the
// remote's 404 and 504 M_NOT_YET_UPLOADED pass through, too large is 502
// M_TOO_LARGE, a timeout 504, anything else 502 M_UNKNOWN.
func (s *Server) remoteMediaError(ctx context.Context, server string, err error) error {
	var he *fedclient.HTTPError
	var me *actors.MatrixError
	switch {
	case errors.As(err, &he) && he.Status == http.StatusNotFound:
		return actors.ErrNotFound("media not found")
	case errors.As(err, &he) && he.Status == http.StatusGatewayTimeout && he.ErrCode == "M_NOT_YET_UPLOADED":
		return errStatus(http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED", "content has not yet been uploaded")
	case errors.As(err, &he) && he.ErrCode == "M_TOO_LARGE", errors.Is(err, fedclient.ErrTooLarge),
		errors.As(err, &me) && me.ErrCode == "M_TOO_LARGE":
		return errStatus(http.StatusBadGateway, "M_TOO_LARGE", "the media of "+server+" is larger than this server keeps")
	case errors.As(err, &he) && he.Status == http.StatusBadRequest && thumbnailRefused(he):
		// The remote cannot thumbnail it: the client asked something that
		// makes no sense for this media.
		return errStatus(http.StatusBadRequest, "M_UNKNOWN", "the remote server cannot thumbnail this media")
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		return errStatus(http.StatusGatewayTimeout, "M_UNKNOWN", "timed out fetching the media of "+server)
	}
	s.log.Info("gateway: remote media", "server", server, "err", err)
	return errStatus(http.StatusBadGateway, "M_UNKNOWN", "could not get the media of "+server)
}

func thumbnailRefused(he *fedclient.HTTPError) bool {
	return he.ErrCode == "M_UNKNOWN" || he.ErrCode == "M_INVALID_PARAM"
}

// readErrTracker remembers the error of the reader it wraps, so that a
// failure of the remote (cut connection, oversized answer) is told from a
// failure of the local store.
type readErrTracker struct {
	r   io.Reader
	err error
}

func (t *readErrTracker) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		t.err = err
	}
	return n, err
}

// keepRemoteMedia stores body (at most limit bytes) as a new record of the
// item's media actor and returns where it is.
func (s *Server) keepRemoteMedia(ctx context.Context, server, mediaID string, body io.Reader, contentType, filename string, limit int64) (remoteMediaEntry, error) {
	owner := s.mediaOwnerKey("\x00remote media\x00mxc://" + server + "/" + mediaID)
	lim := s.mediaLimits()
	// Remote media is no user's: no quota, but the upload size bound.
	lim.Quota = 0
	lim.MaxUpload = limit
	remote := !s.mediaLocal(owner)
	res, err := s.router.Request(ctx, &pb.MediaBegin{Server: s.cfg.ServerName, OwnerKey: owner,
		SizeHint: -1, Limits: lim, Remote: remote})
	if err != nil {
		return remoteMediaEntry{}, err
	}
	begin, ok := res.(*pb.MediaBeginReply)
	if !ok {
		return remoteMediaEntry{}, errors.New("media: unexpected begin reply")
	}
	src := &readErrTracker{r: body}
	commit := &pb.MediaCommit{Server: s.cfg.ServerName, OwnerKey: owner, UserId: "mxc://" + server + "/" + mediaID,
		ContentType: contentType, Filename: filename, Limits: lim}
	if begin.UploadId != "" {
		if err := s.streamUpload(ctx, owner, begin.UploadId, src, limit); err != nil {
			if src.err != nil {
				return remoteMediaEntry{}, src.err
			}
			return remoteMediaEntry{}, err
		}
		commit.UploadId = begin.UploadId
	} else {
		staged, err := stageRemote(begin.StagingDir, src, limit)
		if err != nil {
			return remoteMediaEntry{}, err
		}
		commit.StagedPath = staged
	}
	res, err = s.router.Request(ctx, commit)
	if err != nil {
		return remoteMediaEntry{}, err
	}
	rep, ok := res.(*pb.MediaCommitReply)
	if !ok {
		return remoteMediaEntry{}, errors.New("media: unexpected commit reply")
	}
	return remoteMediaEntry{Owner: owner, ID: rep.MediaId}, nil
}

// stageRemote copies a remote's media into a staged file of dir.
func stageRemote(dir string, body *readErrTracker, limit int64) (string, error) {
	f, err := storage.CreateStaged(dir)
	if err != nil {
		return "", err
	}
	n, err := io.Copy(f, io.LimitReader(body, limit+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n > limit {
		err = fedclient.ErrTooLarge
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// dispositionFilename is the filename of a Content-Disposition header.
func dispositionFilename(cd string) string {
	if cd == "" {
		return ""
	}
	_, params, err := mime.ParseMediaType(cd)
	if err != nil {
		return ""
	}
	return params["filename"]
}

// cleanContentType normalises a content type a remote sent.
func cleanContentType(ct string) (string, bool) {
	if ct == "" || len(ct) > maxMediaContentType {
		return "", false
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return "", false
	}
	out := mime.FormatMediaType(mt, params)
	return out, out != ""
}

func validFilename(name string) bool {
	if !utf8.ValidString(name) {
		return false
	}
	for _, c := range name {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}
