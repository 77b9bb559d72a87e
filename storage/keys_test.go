package storage

import (
	"bytes"
	"context"
	"errors"
	"math"
	"testing"

	"go.etcd.io/bbolt"
)

func TestU64Key(t *testing.T) {
	vals := []uint64{0, 1, 255, 256, 1 << 32, math.MaxUint64 - 1, math.MaxUint64}
	for i, v := range vals {
		k := U64Key(v)
		if len(k) != 8 {
			t.Fatalf("U64Key(%d) has %d bytes", v, len(k))
		}
		got, err := ParseU64Key(k)
		if err != nil || got != v {
			t.Errorf("ParseU64Key(U64Key(%d)) = %d, %v", v, got, err)
		}
		if i > 0 && bytes.Compare(U64Key(vals[i-1]), k) >= 0 {
			t.Errorf("U64Key(%d) does not sort after U64Key(%d)", v, vals[i-1])
		}
	}
	if got := AppendU64Key([]byte("p"), 2); !bytes.Equal(got, []byte("p\x00\x00\x00\x00\x00\x00\x00\x02")) {
		t.Errorf("AppendU64Key = %q", got)
	}
	for _, bad := range [][]byte{nil, {1}, make([]byte, 9)} {
		if _, err := ParseU64Key(bad); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseU64Key(%d bytes): %v, want ErrBadKey", len(bad), err)
		}
	}
}

func TestBucketAndNamespace(t *testing.T) {
	p := openTest(t, Options{})
	ctx := context.Background()

	err := p.View(func(tx *bbolt.Tx) error {
		b, err := Bucket(tx, false, []byte("a"), []byte("b"))
		if b != nil || err != nil {
			t.Errorf("absent bucket on read: %v, %v; want nil, nil", b, err)
		}
		if _, err := Bucket(tx, true, []byte("a")); err == nil {
			t.Error("create in a read-only tx accepted")
		}
		if _, err := Bucket(tx, false); !errors.Is(err, ErrBadKey) {
			t.Errorf("empty path: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	err = p.Update(ctx, func(tx *bbolt.Tx) error {
		b, err := Bucket(tx, true, []byte("a"), []byte("b"), []byte("c"))
		if err != nil {
			return err
		}
		if err := b.Put([]byte("k"), []byte("v")); err != nil {
			return err
		}
		if _, err := Bucket(tx, true, []byte("a"), nil); !errors.Is(err, ErrBadKey) {
			t.Errorf("empty element: %v", err)
		}
		for _, id := range []string{"room/!r1:example.org", "room/!r2:example.org"} {
			for _, store := range []string{"events", "state"} {
				nb, err := Namespace(tx, true, id, store)
				if err != nil {
					return err
				}
				if err := nb.Put([]byte("k"), []byte(id+" "+store)); err != nil {
					return err
				}
			}
		}
		// A plain key on the path is absent to readers, an error to writers.
		if err := b.Put([]byte("plain"), []byte("v")); err != nil {
			return err
		}
		path := [][]byte{[]byte("a"), []byte("b"), []byte("c"), []byte("plain")}
		if nb, err := Bucket(tx, false, path...); nb != nil || err != nil {
			t.Errorf("plain key read as bucket: %v, %v", nb, err)
		}
		if _, err := Bucket(tx, true, path...); err == nil {
			t.Error("plain key created over as a bucket")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	err = p.View(func(tx *bbolt.Tx) error {
		b, err := Bucket(tx, false, []byte("a"), []byte("b"), []byte("c"))
		if err != nil || b == nil || string(b.Get([]byte("k"))) != "v" {
			t.Errorf("nested bucket read back: %v, %v", b, err)
		}
		for _, id := range []string{"room/!r1:example.org", "room/!r2:example.org"} {
			for _, store := range []string{"events", "state"} {
				nb, err := Namespace(tx, false, id, store)
				if err != nil || nb == nil {
					t.Fatalf("namespace %s %s: %v", id, store, err)
				}
				if got := string(nb.Get([]byte("k"))); got != id+" "+store {
					t.Errorf("namespace %s %s holds %q", id, store, got)
				}
			}
		}
		if nb, err := Namespace(tx, false, "room/!absent:example.org", "events"); nb != nil || err != nil {
			t.Errorf("absent namespace: %v, %v", nb, err)
		}
		for _, bad := range []string{"", "\x00meta", string(make([]byte, bbolt.MaxKeySize+1))} {
			if _, err := Namespace(tx, false, bad, "events"); !errors.Is(err, ErrBadKey) {
				t.Errorf("identity %.10q: %v, want ErrBadKey", bad, err)
			}
		}
		if _, err := Namespace(tx, false, "room/!r1:example.org", ""); !errors.Is(err, ErrBadKey) {
			t.Errorf("empty store name: %v, want ErrBadKey", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	err = p.Update(ctx, func(tx *bbolt.Tx) error {
		if err := DeleteIdentity(tx, "room/!r1:example.org"); err != nil {
			return err
		}
		return DeleteIdentity(tx, "room/!never:example.org")
	})
	if err != nil {
		t.Fatal(err)
	}
	err = p.View(func(tx *bbolt.Tx) error {
		if b, _ := Namespace(tx, false, "room/!r1:example.org", "events"); b != nil {
			t.Error("deleted identity still has data")
		}
		if b, _ := Namespace(tx, false, "room/!r2:example.org", "events"); b == nil {
			t.Error("deleting one identity removed another")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
