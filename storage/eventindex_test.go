package storage

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/bbolt"
)

func lookupIndex(t *testing.T, p *Partition, identity, eventID string) (string, bool) {
	t.Helper()
	var room string
	var ok bool
	if err := p.View(func(tx *bbolt.Tx) error {
		var err error
		room, ok, err = EventIndexRoom(tx, identity, eventID)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return room, ok
}

func TestEventIndexStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	p, err := Open(path, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const id = "eventidx/3"
	if _, ok := lookupIndex(t, p, id, "$a"); ok {
		t.Fatal("empty index knows $a")
	}
	if err := p.Update(ctx, func(tx *bbolt.Tx) error {
		return PutEventIndex(tx, id, "!r1:x", []string{"$a", "$b"})
	}); err != nil {
		t.Fatal(err)
	}
	// A second room claiming $a does not take it over.
	if err := p.Update(ctx, func(tx *bbolt.Tx) error {
		return PutEventIndex(tx, id, "!r2:x", []string{"$a", "$c"})
	}); err != nil {
		t.Fatal(err)
	}
	for ev, want := range map[string]string{"$a": "!r1:x", "$b": "!r1:x", "$c": "!r2:x"} {
		if got, ok := lookupIndex(t, p, id, ev); !ok || got != want {
			t.Errorf("%s: %q %v, want %q", ev, got, ok, want)
		}
	}
	// Another shard's namespace is separate.
	if _, ok := lookupIndex(t, p, "eventidx/4", "$a"); ok {
		t.Error("shard 4 sees shard 3's entry")
	}
	// Oversized or empty IDs are refused, and nothing of the batch lands.
	long := "$" + strings.Repeat("x", MaxIndexedIDBytes)
	for _, bad := range [][]string{{"$d", long}, {""}} {
		err := p.Update(ctx, func(tx *bbolt.Tx) error { return PutEventIndex(tx, id, "!r1:x", bad) })
		if !errors.Is(err, ErrBadKey) {
			t.Errorf("%d-byte ID: %v, want ErrBadKey", len(bad[len(bad)-1]), err)
		}
	}
	if _, ok := lookupIndex(t, p, id, "$d"); ok {
		t.Error("$d stored from a refused batch")
	}
	if err := p.Update(ctx, func(tx *bbolt.Tx) error {
		return PutEventIndex(tx, id, strings.Repeat("!", MaxIndexedIDBytes+1), []string{"$e"})
	}); !errors.Is(err, ErrBadKey) {
		t.Errorf("long room ID: %v", err)
	}
	if _, ok := lookupIndex(t, p, id, long); ok {
		t.Error("lookup of an oversized ID found something")
	}
	// Durable across reopening.
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p, err = Open(path, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if got, ok := lookupIndex(t, p, id, "$b"); !ok || got != "!r1:x" {
		t.Errorf("after reopen: %q %v", got, ok)
	}
}
