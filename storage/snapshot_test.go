package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"go.etcd.io/bbolt"
)

func TestSnapshotRestoreIdentical(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	src, err := Open(filepath.Join(dir, "src.db"), 5, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.SetEpoch(3); err != nil {
		t.Fatal(err)
	}
	for r := range 20 {
		id := fmt.Sprintf("room/!%d:example.org", r)
		err := src.Update(ctx, func(tx *bbolt.Tx) error {
			for _, store := range []string{"events", "state"} {
				b, err := Namespace(tx, true, id, store)
				if err != nil {
					return err
				}
				for i := range 50 {
					// Some values span overflow pages.
					v := bytes.Repeat([]byte{byte(i)}, 10+i*i*3)
					if err := b.Put(U64Key(uint64(i)), v); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var want []string
	if err := src.View(func(tx *bbolt.Tx) error { want = dump(tx); return nil }); err != nil {
		t.Fatal(err)
	}

	var snap bytes.Buffer
	n, err := src.Snapshot(&snap)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(snap.Len()) {
		t.Errorf("Snapshot reported %d bytes, wrote %d", n, snap.Len())
	}
	dst := filepath.Join(dir, "dst.db")
	if err := Restore(dst, bytes.NewReader(snap.Bytes())); err != nil {
		t.Fatal(err)
	}
	p, err := Open(dst, 5, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var got []string
	if err := p.View(func(tx *bbolt.Tx) error { got = dump(tx); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("restored file differs: %d entries, want %d", len(got), len(want))
	}
	if p.Epoch() != 3 {
		t.Errorf("restored epoch %d, want 3", p.Epoch())
	}
	if err := p.Update(ctx, put([]byte("k"), "v")); err != nil {
		t.Errorf("restored partition not writable: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*.restore-*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestRestoreRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	src := openTest(t, Options{})
	for i := range 500 {
		if err := src.Update(context.Background(), put(U64Key(uint64(i)), "some value")); err != nil {
			t.Fatal(err)
		}
	}
	var snap bytes.Buffer
	if _, err := src.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	full := snap.Bytes()

	target := filepath.Join(dir, "target.db")
	if err := os.WriteFile(target, []byte("previous"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"empty":          nil,
		"not bbolt":      bytes.Repeat([]byte("x"), 3*len(full)),
		"truncated":      full[:len(full)-4096],
		"one page":       full[:4096],
		"trailing bytes": append(slices.Clone(full), make([]byte, 4096)...),
	}
	for name, data := range cases {
		err := Restore(target, bytes.NewReader(data))
		t.Logf("%s: %v", name, err)
		if !errors.Is(err, ErrBadSnapshot) {
			t.Errorf("%s: %v, want ErrBadSnapshot", name, err)
		}
		if b, _ := os.ReadFile(target); string(b) != "previous" {
			t.Errorf("%s: refused restore changed the target", name)
		}
	}
	readErr := errors.New("connection reset")
	if err := Restore(target, &failingReader{data: full[:8192], err: readErr}); !errors.Is(err, readErr) {
		t.Errorf("failing stream: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*.restore-*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// A file some partition has open is never replaced under it.
	if err := Restore(src.Path(), bytes.NewReader(full)); !errors.Is(err, ErrLocked) {
		t.Errorf("restore over an open partition: %v, want ErrLocked", err)
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(b []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(b, r.data)
	r.data = r.data[n:]
	return n, nil
}

// TestSnapshotConsistentUnderWrites takes snapshots while writers commit
// pairs of keys in single Updates: no snapshot may hold one key of a pair
// without the other.
func TestSnapshotConsistentUnderWrites(t *testing.T) {
	dir := t.TempDir()
	p := openTest(t, Options{})
	const writers = 8
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				err := p.Update(context.Background(), func(tx *bbolt.Tx) error {
					for _, side := range []string{"a", "b"} {
						b, err := Bucket(tx, true, []byte(side))
						if err != nil {
							return err
						}
						if err := b.Put(AppendU64Key([]byte{byte(w)}, uint64(i)), bytes.Repeat([]byte{'v'}, 200)); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	maxPairs := 0
	for s := 0; s < 15 || (maxPairs < 200 && s < 500); s++ {
		var snap bytes.Buffer
		if _, err := p.Snapshot(&snap); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, fmt.Sprintf("snap-%d.db", s))
		if err := Restore(path, &snap); err != nil {
			t.Fatal(err)
		}
		db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		err = db.View(func(tx *bbolt.Tx) error {
			a, b := tx.Bucket([]byte("a")), tx.Bucket([]byte("b"))
			if a == nil || b == nil {
				if a != b {
					t.Errorf("snapshot %d holds one side's bucket only", s)
				}
				return nil
			}
			na, nb := a.Stats().KeyN, b.Stats().KeyN
			if na != nb {
				t.Errorf("snapshot %d: %d a-keys, %d b-keys", s, na, nb)
			}
			maxPairs = max(maxPairs, na)
			return a.ForEach(func(k, _ []byte) error {
				if b.Get(k) == nil {
					t.Errorf("snapshot %d: a%x without b%x", s, k, k)
				}
				return nil
			})
		})
		_ = db.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if maxPairs == 0 {
		t.Error("no snapshot saw any write: the test raced nothing")
	}
	t.Logf("largest snapshot held %d pairs", maxPairs)
}
