package storage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrBadSnapshot is returned by Restore for a stream that is not a complete,
// readable partition file.
var ErrBadSnapshot = errors.New("storage: bad snapshot")

// maxSnapshotDepth bounds the bucket nesting Restore walks when it checks a
// snapshot; shoal's stores nest two or three levels deep.
const maxSnapshotDepth = 32

// Snapshot writes a consistent copy of the whole partition to w and returns
// the number of bytes written. It reads in one read-only transaction, so
// writers keep committing while it runs and the copy holds exactly the
// commits made before it started. The copy is a bbolt file: Restore installs
// it on another node.
//
// A long Snapshot keeps the file's memory map in place: a commit that needs to
// grow the file waits for it (Options.InitialMmapSize avoids that).
func (p *Partition) Snapshot(w io.Writer) (int64, error) {
	var n int64
	err := p.View(func(tx *bbolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		if err != nil {
			return fmt.Errorf("storage: partition %d: snapshot after %d bytes: %w", p.id, n, err)
		}
		return nil
	})
	return n, err
}

// Restore installs the partition file read from r (a Snapshot) at path: it
// writes a temporary file beside path, fsyncs it, checks that it is a
// complete bbolt file whose every bucket and key can be read, renames it over
// path and fsyncs the directory. On any error path is left as it was.
//
// No process may have path open: Restore refuses with ErrLocked a file whose
// lock is held (a Partition of this or another process). The check is meant
// to catch truncated transfers and damaged file structure, not crafted files
// (snapshots come from the cluster's own nodes); bbolt keeps no checksum of
// its data pages, so a transport that may flip bytes must checksum the stream.
func Restore(path string, r io.Reader) error {
	if err := restoreFile(path, r, -1); err != nil {
		return fmt.Errorf("storage: restore %s: %w", path, err)
	}
	return nil
}

// restoreFile is Restore; with want >= 0 it also requires the snapshot to be
// partition want.
func restoreFile(path string, r io.Reader, want int64) (err error) {
	if err := checkUnlocked(path); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".restore-*")
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	n, err := io.Copy(f, r)
	if err != nil {
		return fmt.Errorf("receive snapshot after %d bytes: %w", n, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := checkSnapshot(tmp, n, want); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("install snapshot: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	return nil
}

// installFile moves the complete, synced snapshot file src over path after
// the checks Restore makes; src must be on path's file system. On error
// path is left as it was and src stays.
func installFile(path, src string, want int64) error {
	if err := checkUnlocked(path); err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("snapshot file: %w", err)
	}
	if err := checkSnapshot(src, fi.Size(), want); err != nil {
		return err
	}
	if err := os.Rename(src, path); err != nil {
		return fmt.Errorf("install snapshot: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

// checkUnlocked refuses to replace a file whose bbolt lock someone holds.
func checkUnlocked(path string) (err error) {
	if _, err := os.Stat(path); err != nil {
		return nil // nothing to replace, or nothing we could check
	}
	// The old file may be damaged: a fault while bbolt reads it only means
	// nobody can be using it.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			err = nil
		}
	}()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: 50 * time.Millisecond})
	if errors.Is(err, berrors.ErrTimeout) {
		return fmt.Errorf("%s is open: %w", path, ErrLocked)
	}
	if err == nil {
		_ = db.Close()
	}
	// Any other error means an unreadable file, which the restore replaces.
	return nil
}

// checkSnapshot opens the received file read-only and reads all of it. A
// snapshot is exactly as long as its meta page says (Tx.WriteTo writes
// Tx.Size bytes), which catches truncation before any page past the end of
// the file is touched; bbolt's panics on damaged pages, and a fault on the
// memory map, are turned into ErrBadSnapshot.
func checkSnapshot(path string, size int64, want int64) (err error) {
	if size == 0 {
		return fmt.Errorf("empty stream: %w", ErrBadSnapshot)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("reading snapshot: %v: %w", v, ErrBadSnapshot)
		}
	}()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("open snapshot: %v: %w", err, ErrBadSnapshot)
	}
	defer func() { _ = db.Close() }()
	return db.View(func(tx *bbolt.Tx) error {
		if tx.Size() != size {
			return fmt.Errorf("received %d bytes of a %d-byte file: %w", size, tx.Size(), ErrBadSnapshot)
		}
		if _, err := checkPartitionID(tx, want); err != nil {
			return err
		}
		return tx.ForEach(func(name []byte, b *bbolt.Bucket) error {
			return walkBucket(b, 1)
		})
	})
}

func walkBucket(b *bbolt.Bucket, depth int) error {
	if depth > maxSnapshotDepth {
		return fmt.Errorf("buckets nested deeper than %d: %w", maxSnapshotDepth, ErrBadSnapshot)
	}
	return b.ForEach(func(k, v []byte) error {
		if v != nil {
			return nil
		}
		nb := b.Bucket(k)
		if nb == nil {
			return fmt.Errorf("key %q is neither value nor bucket: %w", k, ErrBadSnapshot)
		}
		return walkBucket(nb, depth+1)
	})
}

// syncDir makes the entries of dir (a created or renamed file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer func() { _ = d.Close() }()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
