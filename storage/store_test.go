package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestPartitionOfGolden(t *testing.T) {
	// Values checked against an independent SHA-256 implementation. They
	// are part of the on-disk format: a change moves every actor.
	golden := []struct {
		identity string
		count    uint32
		want     uint32
	}{
		{"room/!abc:example.org", 64, 13},
		{"user/@alice:example.org", 64, 55},
		{"device/@alice:example.org/DEVID", 64, 13},
		{"room/!abc:example.org", 16, 13},
		{"", 7, 1},
		{"user/@bob:matrix.org", 1000, 410},
	}
	for _, g := range golden {
		if got := PartitionOf(g.identity, g.count); got != g.want {
			t.Errorf("PartitionOf(%q, %d) = %d, want %d", g.identity, g.count, got, g.want)
		}
	}
}

func TestPartitionOfSpread(t *testing.T) {
	const ids, count = 10000, 16
	var per [count]int
	for i := range ids {
		per[PartitionOf(fmt.Sprintf("room/!%d:example.org", i), count)]++
	}
	mean := float64(ids) / count
	for p, n := range per {
		if float64(n) < 0.7*mean || float64(n) > 1.3*mean {
			t.Errorf("partition %d got %d identities, mean %.0f: outside ±30%%", p, n, mean)
		}
	}
}

func TestPartitionOfZeroCount(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("PartitionOf with count 0 did not panic")
		}
	}()
	PartitionOf("room/!a:b", 0)
}

func TestStore(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := OpenStore(dir, []uint32{7, 2, 40}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Partitions(); !slices.Equal(got, []uint32{2, 7, 40}) {
		t.Errorf("Partitions() = %v", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "partitions", "p-0007.db")); err != nil {
		t.Errorf("partition 7's file: %v", err)
	}
	if _, ok := s.Partition(3); ok {
		t.Error("store holds a partition it was not given")
	}
	p7, ok := s.Partition(7)
	if !ok || p7.ID() != 7 || p7.Path() != s.Path(7) {
		t.Fatalf("Partition(7) = %v, %v", p7, ok)
	}
	if err := p7.Update(ctx, put([]byte("k"), "seven")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(7); err == nil {
		t.Error("acquiring a held partition accepted")
	}

	// Hand partition 7 to a second store, as a handoff would.
	var snap bytes.Buffer
	if _, err := p7.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(7); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Partition(7); ok {
		t.Error("released partition still held")
	}
	if err := s.Release(7); err == nil {
		t.Error("releasing twice accepted")
	}
	s2, err := OpenStore(t.TempDir(), nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Restore(8, bytes.NewReader(snap.Bytes())); !errors.Is(err, ErrPartitionMismatch) {
		t.Errorf("restoring partition 7's snapshot as 8: %v, want ErrPartitionMismatch", err)
	}
	if _, err := os.Stat(s2.Path(8)); !os.IsNotExist(err) {
		t.Errorf("refused restore left a file: %v", err)
	}
	r7, err := s2.Restore(7, bytes.NewReader(snap.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if got := get(t, r7, []byte("k")); string(got) != "seven" {
		t.Errorf("restored partition holds %q", got)
	}
	if _, err := s2.Restore(7, bytes.NewReader(snap.Bytes())); err == nil {
		t.Error("restoring over a held partition accepted")
	}

	// The old owner can take its partition back from its file.
	p7, err = s.Acquire(7)
	if err != nil {
		t.Fatal(err)
	}
	if got := get(t, p7, []byte("k")); string(got) != "seven" {
		t.Errorf("re-acquired partition holds %q", got)
	}
	if _, err := OpenStore(t.TempDir(), []uint32{1, 1}, Options{}); err == nil {
		t.Error("duplicate partition accepted")
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p7.Update(ctx, put([]byte("k"), "x")); !errors.Is(err, ErrClosed) {
		t.Errorf("update on a closed store's partition: %v", err)
	}
	if _, err := s.Acquire(9); !errors.Is(err, ErrClosed) {
		t.Errorf("acquire on a closed store: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	s, err = OpenStore(dir, []uint32{7}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p7, _ = s.Partition(7)
	if got := get(t, p7, []byte("k")); string(got) != "seven" {
		t.Errorf("after reopening the store: %q", got)
	}
}

func TestOpenStoreLockedPartition(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, []uint32{1, 2}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = OpenStore(dir, []uint32{0, 2}, Options{LockTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second store on the same files: %v, want ErrLocked", err)
	}
	// The failed store closed partition 0 again: a third store can open it.
	s3, err := OpenStore(dir, []uint32{0}, Options{LockTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("partition 0 left locked by a failed OpenStore: %v", err)
	}
	_ = s3.Close()
}
