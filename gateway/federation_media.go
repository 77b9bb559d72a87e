package gateway

import (
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// Federation media (server-server API "Content Repository", MSC3916): other
// servers download this server's media and thumbnails with signed requests
// and get a multipart/mixed answer, a JSON metadata part ({}) then the
// bytes. The bytes come from the same media actors and blob files as local
// clients' downloads (client_media.go); this server never answers with a
// Location part, since its blobs have no URL of their own.

// registerFederationMediaDirectory registers H4's federation and client routes: media,
// the public room directory, the space hierarchy, OpenID and
// timestamp_to_event.
func (s *Server) registerFederationMediaDirectory() {
	s.handle("GET /_matrix/federation/v1/media/download/{mediaId}", s.fedAuthed(s.handleFederationMediaDownload))
	s.handle("GET /_matrix/federation/v1/media/thumbnail/{mediaId}", s.fedAuthed(s.handleFederationMediaThumbnail))
	s.registerFederationDirectory()
	s.registerOpenID()
}

func (s *Server) handleFederationMediaDownload(w http.ResponseWriter, r *http.Request, _ string, _ []byte) {
	mediaID := r.PathValue("mediaId")
	if !validMediaID(mediaID) {
		writeError(w, r, actors.ErrNotFound("media not found"))
		return
	}
	wait, err := downloadWait(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	owner := mediaID[:actors.MediaOwnerKeyLen]
	info, err := s.awaitMedia(r.Context(), &pb.MediaGet{Server: s.cfg.ServerName, OwnerKey: owner, MediaId: mediaID}, wait)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.writeMultipartMedia(w, r, owner, info, info.Filename)
}

func (s *Server) handleFederationMediaThumbnail(w http.ResponseWriter, r *http.Request, _ string, _ []byte) {
	mediaID := r.PathValue("mediaId")
	if !validMediaID(mediaID) {
		writeError(w, r, actors.ErrNotFound("media not found"))
		return
	}
	tp, err := parseThumbParams(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	wait, err := downloadWait(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	owner := mediaID[:actors.MediaOwnerKeyLen]
	info, err := s.awaitMedia(r.Context(), &pb.MediaThumbnail{Server: s.cfg.ServerName, OwnerKey: owner, MediaId: mediaID,
		Width: int32(tp.width), Height: int32(tp.height), Method: tp.method,
		MaxPixels: s.mediaConfig().MaxThumbnailPixels}, wait)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.writeMultipartMedia(w, r, owner, info, "")
}

// thumbParams are the query parameters of a thumbnail request.
type thumbParams struct {
	width, height int
	method        string // crop or scale
	animated      string // "", "true" or "false"
}

// parseThumbParams checks a thumbnail request's parameters as the client
// endpoint does (client_media.go serveThumbnail).
func parseThumbParams(r *http.Request) (thumbParams, error) {
	q := r.URL.Query()
	width, err1 := strconv.Atoi(q.Get("width"))
	height, err2 := strconv.Atoi(q.Get("height"))
	if err1 != nil || err2 != nil || width <= 0 || height <= 0 || width > maxThumbnailDimension || height > maxThumbnailDimension {
		return thumbParams{}, actors.ErrInvalidParam("width and height must be integers from 1 to %d", maxThumbnailDimension)
	}
	tp := thumbParams{width: width, height: height, method: q.Get("method"), animated: q.Get("animated")}
	switch tp.method {
	case "":
		tp.method = "scale"
	case "crop", "scale":
	default:
		return thumbParams{}, actors.ErrInvalidParam("method must be crop or scale")
	}
	if tp.animated != "" && tp.animated != "true" && tp.animated != "false" {
		return thumbParams{}, actors.ErrInvalidParam("animated must be true or false")
	}
	return tp, nil
}

// writeMultipartMedia answers with the two parts of a federation media
// response: {} as the metadata, then the blob of info with its content
// type and disposition. The blob is streamed, never held in memory.
func (s *Server) writeMultipartMedia(w http.ResponseWriter, r *http.Request, owner string, info *pb.MediaInfo, filename string) {
	f, err := s.openBlob(r.Context(), owner, info)
	if err != nil {
		writeError(w, r, err)
		return
	}
	defer f.Close()
	ct, cd := mediaHeaders(info.ContentType, filename)
	mw := multipart.NewWriter(w)
	w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	w.WriteHeader(http.StatusOK)
	meta, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
	if err != nil {
		return
	}
	if _, err := io.WriteString(meta, "{}"); err != nil {
		return
	}
	part, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {ct}, "Content-Disposition": {cd}})
	if err != nil {
		return
	}
	if _, err := io.Copy(part, f); err != nil {
		// The status is sent: cutting the body short (no closing
		// boundary) is how the peer learns that the transfer failed.
		s.log.Info("gateway: federation media", "path", r.URL.Path, "err", err)
		return
	}
	_ = mw.Close()
}

// mediaHeaders returns the Content-Type and Content-Disposition media of
// content type ct named filename is served with: inline only for the types
// the spec lists as safe, attachment otherwise.
func mediaHeaders(ct, filename string) (string, string) {
	if ct == "" {
		ct = "application/octet-stream"
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		ct, mt = "application/octet-stream", "application/octet-stream"
	}
	disposition := "attachment"
	if inlineTypes[strings.ToLower(mt)] {
		disposition = "inline"
	}
	params := map[string]string{}
	if filename != "" {
		params["filename"] = filename
	}
	cd := mime.FormatMediaType(disposition, params)
	if cd == "" {
		cd = disposition
	}
	return ct, cd
}
