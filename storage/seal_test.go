package storage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A handle from At fences every Update with its epoch: once the epoch is
// raised, the old owner's writes are refused and nothing of them lands.
func TestAtFencesUpdates(t *testing.T) {
	p := openTest(t, Options{})
	ctx := context.Background()
	if err := p.SetEpoch(2); err != nil {
		t.Fatal(err)
	}
	owner := p.At(2)
	if err := owner.Update(ctx, put([]byte("a"), "1")); err != nil {
		t.Fatal(err)
	}
	if err := p.SetEpoch(3); err != nil {
		t.Fatal(err)
	}
	if err := owner.Update(ctx, put([]byte("b"), "2")); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("write at a stale epoch: got %v, want ErrStaleEpoch", err)
	}
	if got := get(t, p, []byte("b")); got != nil {
		t.Fatalf("stale write landed: %q", got)
	}
	if err := p.At(3).Update(ctx, put([]byte("b"), "3")); err != nil {
		t.Fatal(err)
	}
	if got := get(t, owner, []byte("a")); string(got) != "1" {
		t.Fatalf("read through the old handle: %q", got)
	}
}

// A fenced write queued after an epoch change that is not committed yet
// passes the cached check and is refused inside the transaction.
func TestAtFenceCheckedInTransaction(t *testing.T) {
	p := openTest(t, Options{})
	owner := p.At(0)
	release, _ := blockCommitter(t, p)
	epochDone := make(chan error, 1)
	go func() { epochDone <- p.SetEpoch(1) }()
	waitFor(t, "SetEpoch to queue", func() bool { return queued(p) == 1 })
	res := make(chan error, 1)
	go func() { res <- owner.Update(context.Background(), put([]byte("late"), "x")) }()
	waitFor(t, "the write to queue", func() bool { return queued(p) == 2 })
	release()
	if err := <-epochDone; err != nil {
		t.Fatal(err)
	}
	if err := <-res; !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("got %v, want ErrStaleEpoch", err)
	}
	if got := get(t, p, []byte("late")); got != nil {
		t.Fatalf("stale write landed: %q", got)
	}
}

func TestSealRefusesWritesAndTravelsInSnapshot(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	p, err := Open(filepath.Join(dir, "a.db"), 4, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Update(ctx, put([]byte("k"), "v")); err != nil {
		t.Fatal(err)
	}
	// An update queued before the seal is committed; one after is refused.
	release, before := blockCommitter(t, p)
	queuedRes := make(chan error, 1)
	go func() { queuedRes <- p.Update(ctx, put([]byte("q"), "queued")) }()
	waitFor(t, "the write to queue", func() bool { return queued(p) == 1 })
	sealRes := make(chan error, 1)
	go func() { sealRes <- p.Seal(5, []byte("to:b")) }()
	waitFor(t, "Seal to queue", func() bool { return queued(p) == 2 })
	afterRes := make(chan error, 1)
	go func() { afterRes <- p.At(0).UpdateAt(ctx, 9, put([]byte("x"), "after")) }()
	waitFor(t, "the late write to queue", func() bool { return queued(p) == 3 })
	release()
	for _, ch := range []<-chan error{before, queuedRes, sealRes} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-afterRes; !errors.Is(err, ErrSealed) {
		t.Fatalf("write queued after the seal: got %v, want ErrSealed", err)
	}
	if err := p.Update(ctx, put([]byte("y"), "z")); !errors.Is(err, ErrSealed) {
		t.Fatalf("write on a sealed partition: got %v, want ErrSealed", err)
	}
	if p.Epoch() != 5 {
		t.Fatalf("epoch %d, want 5", p.Epoch())
	}
	if err := p.Seal(4, nil); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("seal at an older epoch: got %v", err)
	}

	var snap bytes.Buffer
	if _, err := p.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	store, err := OpenStore(filepath.Join(dir, "b"), nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	q, err := store.Restore(4, &snap)
	if err != nil {
		t.Fatal(err)
	}
	note, sealed, err := q.Sealed()
	if err != nil || !sealed || string(note) != "to:b" {
		t.Fatalf("restored copy: sealed=%v note=%q err=%v", sealed, note, err)
	}
	if q.Epoch() != 5 {
		t.Fatalf("restored epoch %d, want 5", q.Epoch())
	}
	if err := q.Update(ctx, put([]byte("y"), "z")); !errors.Is(err, ErrSealed) {
		t.Fatalf("write on the restored sealed copy: got %v", err)
	}
	if err := q.Unseal(); err != nil {
		t.Fatal(err)
	}
	if err := q.At(5).Update(ctx, put([]byte("y"), "z")); err != nil {
		t.Fatal(err)
	}
	if string(get(t, q, []byte("q"))) != "queued" || get(t, q, []byte("x")) != nil {
		t.Fatal("the copy does not hold exactly the writes made before the seal")
	}
	if _, sealed, _ := q.Sealed(); sealed {
		t.Fatal("still sealed after Unseal")
	}
}

// The seal survives a restart.
func TestSealSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	p, err := Open(path, 2, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Seal(1, []byte("n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p, err = Open(path, 2, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Update(context.Background(), put([]byte("k"), "v")); !errors.Is(err, ErrSealed) {
		t.Fatalf("reopened sealed file took a write: %v", err)
	}
	if note, sealed, _ := p.Sealed(); !sealed || string(note) != "n" {
		t.Fatalf("sealed=%v note=%q", sealed, note)
	}
}

func TestStoreDropAndPartitionFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, []uint32{1, 3, 12}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Files that are not partitions are ignored.
	for _, name := range []string{"p-0007.db.restore-1", "p-7.db", "notes"} {
		if err := os.WriteFile(filepath.Join(dir, "partitions", name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ids, err := PartitionFiles(dir)
	if err != nil || !slices.Equal(ids, []uint32{1, 3, 12}) {
		t.Fatalf("PartitionFiles: %v %v", ids, err)
	}
	if err := s.Drop(3); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Partition(3); ok {
		t.Fatal("dropped partition still held")
	}
	if _, err := os.Stat(s.Path(3)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dropped file still there: %v", err)
	}
	ids, _ = PartitionFiles(dir)
	if !slices.Equal(ids, []uint32{1, 12}) {
		t.Fatalf("after drop: %v", ids)
	}
	if err := s.Drop(3); err != nil {
		t.Fatalf("dropping an absent partition: %v", err)
	}
	if ids, err := PartitionFiles(filepath.Join(dir, "nowhere")); err != nil || len(ids) != 0 {
		t.Fatalf("missing dir: %v %v", ids, err)
	}
}

// Install checks a snapshot file and moves it into place; a damaged or
// foreign file is refused and stays where it was.
func TestStoreInstall(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	src, err := Open(filepath.Join(dir, "src.db"), 3, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Update(ctx, put([]byte("k"), "v")); err != nil {
		t.Fatal(err)
	}
	var snap bytes.Buffer
	if _, err := src.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	src.Close()
	store, err := OpenStore(filepath.Join(dir, "node"), nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, "node", "partitions", name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	truncated := write("truncated", snap.Bytes()[:snap.Len()/2])
	if _, err := store.Install(3, truncated); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("truncated snapshot: got %v", err)
	}
	if _, err := os.Stat(truncated); err != nil {
		t.Fatalf("refused file moved: %v", err)
	}
	foreign := write("foreign", snap.Bytes())
	if _, err := store.Install(4, foreign); !errors.Is(err, ErrPartitionMismatch) {
		t.Fatalf("snapshot of another partition: got %v", err)
	}
	good := write("good", snap.Bytes())
	p, err := store.Install(3, good)
	if err != nil {
		t.Fatal(err)
	}
	if string(get(t, p, []byte("k"))) != "v" {
		t.Fatal("installed partition lost its data")
	}
	if _, err := os.Stat(good); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("installed file was copied, not moved: %v", err)
	}
	if _, err := store.Install(3, foreign); err == nil {
		t.Fatal("installed over a held partition")
	}
}
