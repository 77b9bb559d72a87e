package storage

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// PartitionOf returns the partition, among count, of an actor identity: the
// first 8 bytes of the identity's SHA-256, big-endian, modulo count. count
// must not be 0.
//
// The hash is a cryptographic one on purpose: identities are chosen by
// clients and remote servers, and with a fast non-cryptographic hash an
// attacker could compute many room or user IDs that land on one partition and
// pile its load onto one file and one node. With SHA-256 finding such IDs
// costs a brute-force search per ID, and spread is uniform for every input.
// The function is part of the on-disk format: changing it moves every actor.
func PartitionOf(identity string, count uint32) uint32 {
	if count == 0 {
		panic("storage: PartitionOf with a partition count of 0")
	}
	sum := sha256.Sum256([]byte(identity))
	return uint32(binary.BigEndian.Uint64(sum[:8]) % uint64(count))
}

// PartitionFile returns the file name of partition id inside a Store's
// directory: "partitions/p-0007.db".
func PartitionFile(id uint32) string {
	return filepath.Join("partitions", fmt.Sprintf("p-%04d.db", id))
}

// Store is the set of partitions one node holds, each a file
// dir/partitions/p-NNNN.db. Partitions come and go as the cluster moves them
// (Acquire, Restore, Release). A Store is safe for concurrent use.
type Store struct {
	dir  string
	opts Options

	mu      sync.RWMutex
	parts   map[uint32]*Partition
	pending map[uint32]bool // being opened or restored
	closed  bool
}

// OpenStore opens (creating where absent) the given partitions under dir.
// On error nothing stays open.
func OpenStore(dir string, partitions []uint32, opts Options) (*Store, error) {
	pdir := filepath.Join(dir, "partitions")
	if err := os.MkdirAll(pdir, 0o700); err != nil {
		return nil, fmt.Errorf("storage: open store %s: %w", dir, err)
	}
	if !opts.NoSync {
		if err := syncDir(dir); err != nil {
			return nil, fmt.Errorf("storage: open store %s: %w", dir, err)
		}
	}
	s := &Store{
		dir:     dir,
		opts:    opts,
		parts:   make(map[uint32]*Partition, len(partitions)),
		pending: make(map[uint32]bool),
	}
	for _, id := range partitions {
		if _, dup := s.parts[id]; dup {
			_ = s.Close()
			return nil, fmt.Errorf("storage: open store %s: partition %d listed twice", dir, id)
		}
		p, err := Open(s.Path(id), id, opts)
		if err != nil {
			_ = s.Close()
			return nil, err // names the partition and its file
		}
		s.parts[id] = p
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Path returns the file of partition id, held or not.
func (s *Store) Path(id uint32) string { return filepath.Join(s.dir, PartitionFile(id)) }

// Partition returns partition id if this store holds it.
func (s *Store) Partition(id uint32) (*Partition, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.parts[id]
	return p, ok
}

// Partitions returns the numbers of the partitions held, in order.
func (s *Store) Partitions() []uint32 {
	s.mu.RLock()
	ids := make([]uint32, 0, len(s.parts))
	for id := range s.parts {
		ids = append(ids, id)
	}
	s.mu.RUnlock()
	slices.Sort(ids)
	return ids
}

// Acquire opens partition id from its file (creating an empty one if absent)
// and adds it to the store. It fails if the store already holds id.
func (s *Store) Acquire(id uint32) (*Partition, error) {
	return s.add(id, func() error { return nil })
}

// Restore installs a snapshot of partition id read from r (see the
// package-level Restore), opens it and adds it to the store. The store must
// not hold id (Release it first); a snapshot of another partition is refused
// with ErrPartitionMismatch and leaves the file as it was.
func (s *Store) Restore(id uint32, r io.Reader) (*Partition, error) {
	return s.add(id, func() error {
		if err := restoreFile(s.Path(id), r, int64(id)); err != nil {
			return fmt.Errorf("restore %s: %w", s.Path(id), err)
		}
		return nil
	})
}

// Install is Restore for a snapshot already written to file src (complete
// and synced, on the store's file system): src is checked and moved into
// place rather than copied. The store must not hold id; on error src stays.
func (s *Store) Install(id uint32, src string) (*Partition, error) {
	return s.add(id, func() error {
		if err := installFile(s.Path(id), src, int64(id)); err != nil {
			return fmt.Errorf("install %s: %w", s.Path(id), err)
		}
		return nil
	})
}

// add prepares the file of id with prepare, outside the store's lock, then
// opens it and adds it.
func (s *Store) add(id uint32, prepare func() error) (*Partition, error) {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return nil, fmt.Errorf("storage: partition %d: %w", id, ErrClosed)
	case s.parts[id] != nil || s.pending[id]:
		s.mu.Unlock()
		return nil, fmt.Errorf("storage: partition %d: already held by this store", id)
	}
	s.pending[id] = true
	s.mu.Unlock()

	var p *Partition
	err := prepare()
	if err != nil {
		err = fmt.Errorf("storage: partition %d: %w", id, err)
	} else {
		p, err = Open(s.Path(id), id, s.opts) // its errors name the partition
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, id)
	if err != nil {
		return nil, err
	}
	if s.closed {
		_ = p.Close()
		return nil, fmt.Errorf("storage: partition %d: %w", id, ErrClosed)
	}
	s.parts[id] = p
	return p, nil
}

// Release removes partition id from the store and closes it (committing what
// was queued); its file stays. Releasing a partition not held is an error.
func (s *Store) Release(id uint32) error {
	s.mu.Lock()
	p, ok := s.parts[id]
	delete(s.parts, id)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("storage: release partition %d: not held by this store", id)
	}
	return p.Close()
}

// Drop releases partition id, if held, and deletes its file durably, with
// what belongs to the file beside it (its media blobs, and derived indexes
// named after the file): the node no longer has any copy of the partition.
// The partition must not be in use.
func (s *Store) Drop(id uint32) error {
	s.mu.Lock()
	p, ok := s.parts[id]
	delete(s.parts, id)
	busy := s.pending[id]
	s.mu.Unlock()
	if busy {
		return fmt.Errorf("storage: drop partition %d: being opened or restored", id)
	}
	if ok {
		if err := p.Close(); err != nil {
			return fmt.Errorf("storage: drop partition %d: %w", id, err)
		}
	}
	if err := os.Remove(s.Path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("storage: drop partition %d: %w", id, err)
	}
	for _, d := range []string{blobDir(s.Path(id)), s.Path(id) + ".search"} {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("storage: drop partition %d: %w", id, err)
		}
	}
	if s.opts.NoSync {
		return nil
	}
	if err := syncDir(filepath.Dir(s.Path(id))); err != nil {
		return fmt.Errorf("storage: drop partition %d: %w", id, err)
	}
	return nil
}

// blobDir is the media blob directory of the partition file at path (see
// BlobsOf).
func blobDir(path string) string { return strings.TrimSuffix(path, ".db") + ".media" }

// BlobSums lists the media blobs of partition p (see BlobsOf) by SHA-256,
// leaving out uploads still being received.
func BlobSums(p *Partition) ([]string, error) {
	dir := blobDir(p.Path())
	subs, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("storage: list blobs of partition %d: %w", p.ID(), err)
	}
	var sums []string
	for _, sub := range subs {
		if !sub.IsDir() || len(sub.Name()) != 2 {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, sub.Name()))
		if err != nil {
			return nil, fmt.Errorf("storage: list blobs of partition %d: %w", p.ID(), err)
		}
		for _, f := range files {
			if f.Type().IsRegular() && ValidBlobSum(f.Name()) && strings.HasPrefix(f.Name(), sub.Name()) {
				sums = append(sums, f.Name())
			}
		}
	}
	slices.Sort(sums)
	return sums, nil
}

// InstallBlobs moves received media blobs into partition id's blob
// directory, durably. src holds them as a blob directory does (files named
// by their SHA-256 under their first two hex digits); the caller has checked
// each file's hash. A blob already present is kept; src is removed.
func (s *Store) InstallBlobs(id uint32, src string) error {
	dst := blobDir(s.Path(id))
	subs, err := os.ReadDir(src)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("storage: install blobs of partition %d: %w", id, err)
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return fmt.Errorf("storage: install blobs of partition %d: %w", id, err)
	}
	for _, sub := range subs {
		if !sub.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(src, sub.Name()))
		if err != nil {
			return fmt.Errorf("storage: install blobs of partition %d: %w", id, err)
		}
		to := filepath.Join(dst, sub.Name())
		if err := os.MkdirAll(to, 0o700); err != nil {
			return fmt.Errorf("storage: install blobs of partition %d: %w", id, err)
		}
		for _, f := range files {
			if !ValidBlobSum(f.Name()) {
				continue
			}
			target := filepath.Join(to, f.Name())
			if _, err := os.Stat(target); err == nil {
				continue
			}
			if err := os.Rename(filepath.Join(src, sub.Name(), f.Name()), target); err != nil {
				return fmt.Errorf("storage: install blobs of partition %d: %w", id, err)
			}
		}
		if !s.opts.NoSync {
			if err := syncDir(to); err != nil {
				return fmt.Errorf("storage: install blobs of partition %d: %w", id, err)
			}
		}
	}
	if !s.opts.NoSync {
		if err := syncDir(dst); err != nil {
			return fmt.Errorf("storage: install blobs of partition %d: %w", id, err)
		}
	}
	if err := os.RemoveAll(src); err != nil {
		return fmt.Errorf("storage: install blobs of partition %d: %w", id, err)
	}
	return nil
}

// PartitionFiles returns, in order, the numbers of the partitions that have a
// file in the store directory dir (whether a Store holds them open or not).
// A missing directory holds none.
func PartitionFiles(dir string) ([]uint32, error) {
	entries, err := os.ReadDir(filepath.Join(dir, "partitions"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("storage: list partitions in %s: %w", dir, err)
	}
	var ids []uint32
	for _, e := range entries {
		var id uint32
		if !e.Type().IsRegular() {
			continue
		}
		if _, err := fmt.Sscanf(e.Name(), "p-%d.db", &id); err != nil || e.Name() != filepath.Base(PartitionFile(id)) {
			continue
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// Close closes every partition of the store. Calling it again is a no-op.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	parts := s.parts
	s.parts = make(map[uint32]*Partition)
	s.mu.Unlock()
	var errs []error
	for _, p := range parts {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}
