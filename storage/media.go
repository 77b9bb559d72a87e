package storage

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

// The media store.
//
// A media actor ("media/<server>/<owner key>", one per uploading user) keeps
// its records in two sub-buckets of its namespace: "media", media ID →
// MediaRecord JSON, and "mediaowner", the single key "state" → MediaOwner
// JSON (quota usage and pending async uploads).
//
// Media bytes are not in bbolt: they are blob files beside the partition
// file, content-addressed by SHA-256, so that two uploads of the same bytes
// on one partition share one file. For partition file partitions/p-0007.db
// the blobs are partitions/p-0007.media/<first two hex digits>/<sha256 hex>,
// and partitions/p-0007.media/staging/ holds uploads being received. Blob
// files are written once and never change; a blob is only ever read through
// a path its media actor handed out.
const (
	mediaStore      = "media"
	mediaOwnerStore = "mediaowner"
	stagingDir      = "staging"
	stagingPrefix   = "up-"
)

var mediaOwnerKey = []byte("state")

// MediaRecord is one media item of a media actor.
type MediaRecord struct {
	Owner string `json:"owner"`
	// SHA256 names the blob; empty while an async upload is pending.
	SHA256      string `json:"sha256,omitempty"`
	Size        int64  `json:"size"`
	ContentType string `json:"content_type,omitempty"`
	Filename    string `json:"filename,omitempty"`
	CreatedMs   int64  `json:"created_ms"`
	UploadedMs  int64  `json:"uploaded_ms,omitempty"`
	// ExpiresMs is when a pending async upload's ID lapses.
	ExpiresMs int64 `json:"expires_ms,omitempty"`
	// Thumbs are the thumbnails made so far, by preset ("96x96-crop").
	Thumbs map[string]MediaThumb `json:"thumbs,omitempty"`
}

// Uploaded reports whether the record has its content.
func (r *MediaRecord) Uploaded() bool { return r.SHA256 != "" }

// MediaThumb is a thumbnail kept as a blob.
type MediaThumb struct {
	SHA256      string `json:"sha256"`
	ContentType string `json:"content_type"`
	Size        int64  `json:"size"`
	Width       int    `json:"width"`
	Height      int    `json:"height"`
}

// MediaOwner is a media actor's accounting: bytes charged to the quota,
// the number of items and the pending async uploads (media ID → expiry).
type MediaOwner struct {
	Usage   int64            `json:"usage"`
	Count   int64            `json:"count"`
	Pending map[string]int64 `json:"pending,omitempty"`
}

// MediaRecordOf reads one media record, or ok=false when there is none.
func MediaRecordOf(tx *bbolt.Tx, identity, mediaID string) (rec MediaRecord, ok bool, err error) {
	if mediaID == "" || len(mediaID) > bbolt.MaxKeySize {
		return rec, false, fmt.Errorf("storage: media %s: media ID of %d bytes: %w", identity, len(mediaID), ErrBadKey)
	}
	b, err := Namespace(tx, false, identity, mediaStore)
	if err != nil || b == nil {
		return rec, false, err
	}
	v := b.Get([]byte(mediaID))
	if v == nil {
		return rec, false, nil
	}
	if err := json.Unmarshal(v, &rec); err != nil {
		return rec, false, fmt.Errorf("storage: media %s: decode %s: %w", identity, mediaID, err)
	}
	return rec, true, nil
}

// PutMediaRecord writes one media record.
func PutMediaRecord(tx *bbolt.Tx, identity, mediaID string, rec MediaRecord) error {
	if mediaID == "" || len(mediaID) > bbolt.MaxKeySize {
		return fmt.Errorf("storage: media %s: media ID of %d bytes: %w", identity, len(mediaID), ErrBadKey)
	}
	b, err := Namespace(tx, true, identity, mediaStore)
	if err != nil {
		return fmt.Errorf("storage: media %s: %w", identity, err)
	}
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return b.Put([]byte(mediaID), v)
}

// DeleteMediaRecord removes one media record (an expired pending upload).
func DeleteMediaRecord(tx *bbolt.Tx, identity, mediaID string) error {
	b, err := Namespace(tx, false, identity, mediaStore)
	if err != nil || b == nil {
		return err
	}
	return b.Delete([]byte(mediaID))
}

// MediaOwnerOf reads a media actor's accounting (zero when none is stored).
func MediaOwnerOf(tx *bbolt.Tx, identity string) (MediaOwner, error) {
	var st MediaOwner
	b, err := Namespace(tx, false, identity, mediaOwnerStore)
	if err != nil || b == nil {
		return st, err
	}
	v := b.Get(mediaOwnerKey)
	if v == nil {
		return st, nil
	}
	if err := json.Unmarshal(v, &st); err != nil {
		return st, fmt.Errorf("storage: media %s: decode accounting: %w", identity, err)
	}
	return st, nil
}

// PutMediaOwner writes a media actor's accounting.
func PutMediaOwner(tx *bbolt.Tx, identity string, st MediaOwner) error {
	b, err := Namespace(tx, true, identity, mediaOwnerStore)
	if err != nil {
		return fmt.Errorf("storage: media %s: %w", identity, err)
	}
	v, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return b.Put(mediaOwnerKey, v)
}

// Blobs is the blob directory of one partition (see the media store above).
// Its methods are safe for concurrent use by the media actors of the
// partition: blobs are created by rename, so a reader never sees a partial
// file, and two actors adopting the same bytes at once both end up with the
// same complete file.
type Blobs struct {
	dir    string
	noSync bool
}

// BlobsOf returns the blob directory of partition p.
func BlobsOf(p *Partition) *Blobs {
	return &Blobs{dir: strings.TrimSuffix(p.Path(), ".db") + ".media", noSync: p.opts.NoSync}
}

// Dir is the blob directory.
func (b *Blobs) Dir() string { return b.dir }

// StagingDir returns (creating it) the directory uploads are received in.
// It is on the same file system as the blobs, so adopting a staged file is
// a rename.
func (b *Blobs) StagingDir() (string, error) {
	d := filepath.Join(b.dir, stagingDir)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", fmt.Errorf("storage: blobs %s: %w", b.dir, err)
	}
	return d, nil
}

// CreateStaged makes a new empty file in the staging directory of dir
// (a path StagingDir returned).
func CreateStaged(stagingDir string) (*os.File, error) {
	return os.CreateTemp(stagingDir, stagingPrefix+"*")
}

// IsStaged reports whether path is a file CreateStaged made in this blob
// directory's staging directory.
func (b *Blobs) IsStaged(path string) bool {
	return filepath.Dir(path) == filepath.Join(b.dir, stagingDir) &&
		strings.HasPrefix(filepath.Base(path), stagingPrefix)
}

// SweepStaging removes staged files older than age: uploads whose gateway
// died before it committed or removed them.
func (b *Blobs) SweepStaging(age time.Duration, now time.Time) {
	d := filepath.Join(b.dir, stagingDir)
	entries, err := os.ReadDir(d)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), stagingPrefix) {
			continue
		}
		if info, err := e.Info(); err == nil && now.Sub(info.ModTime()) > age {
			_ = os.Remove(filepath.Join(d, e.Name()))
		}
	}
}

// ValidBlobSum reports whether sum is a lower-case hex SHA-256.
func ValidBlobSum(sum string) bool {
	if len(sum) != sha256.Size*2 {
		return false
	}
	for _, c := range sum {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Path is the file of the blob with SHA-256 sum.
func (b *Blobs) Path(sum string) string {
	return filepath.Join(b.dir, sum[:2], sum)
}

// HashFile returns the SHA-256 (hex) and size of the file at path.
func HashFile(path string) (sum string, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	size, err = io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

// Adopt moves the staged file at path into the blob store under its hash
// sum (computed by the caller with HashFile) and returns the blob's path.
// When a blob with that hash exists the staged file is removed instead:
// identical bytes are stored once. The blob is durable when Adopt returns.
func (b *Blobs) Adopt(path, sum string) (blob string, dedup bool, err error) {
	if !ValidBlobSum(sum) {
		return "", false, fmt.Errorf("storage: blobs %s: bad hash %q: %w", b.dir, sum, ErrBadKey)
	}
	if !b.IsStaged(path) {
		return "", false, fmt.Errorf("storage: blobs %s: %s is not a staged file: %w", b.dir, path, ErrBadKey)
	}
	blob = b.Path(sum)
	if _, err := os.Stat(blob); err == nil {
		_ = os.Remove(path)
		return blob, true, nil
	}
	if err := os.MkdirAll(filepath.Dir(blob), 0o700); err != nil {
		return "", false, fmt.Errorf("storage: blobs %s: %w", b.dir, err)
	}
	if !b.noSync {
		if err := syncFile(path); err != nil {
			return "", false, fmt.Errorf("storage: blobs %s: sync %s: %w", b.dir, path, err)
		}
	}
	if err := os.Rename(path, blob); err != nil {
		return "", false, fmt.Errorf("storage: blobs %s: adopt: %w", b.dir, err)
	}
	if !b.noSync {
		if err := syncDir(filepath.Dir(blob)); err != nil {
			return "", false, fmt.Errorf("storage: blobs %s: %w", b.dir, err)
		}
	}
	return blob, false, nil
}

// Has reports whether the blob with hash sum exists.
func (b *Blobs) Has(sum string) bool {
	if !ValidBlobSum(sum) {
		return false
	}
	_, err := os.Stat(b.Path(sum))
	return err == nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
