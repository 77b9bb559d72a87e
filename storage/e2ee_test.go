package storage

import (
	"context"
	"fmt"
	"testing"

	"go.etcd.io/bbolt"
)

func TestE2EEScanAndDeleteRange(t *testing.T) {
	p := openTest(t, Options{})
	const id = "device/@a:x/D"
	ctx := context.Background()
	if err := p.Update(ctx, func(tx *bbolt.Tx) error {
		e := E2EE(tx, id)
		for i := uint64(1); i <= 5; i++ {
			if err := e.Put(InboxStore, U64Key(i), []byte(fmt.Sprint(i))); err != nil {
				return err
			}
		}
		return e.Put(OTKStore, []byte("alg\x00x"), []byte("k"))
	}); err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := p.View(func(tx *bbolt.Tx) error {
		return E2EE(tx, id).Scan(InboxStore, nil, U64Key(2), 2, func(_, v []byte) bool {
			got = append(got, string(v))
			return true
		})
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[3 4]" {
		t.Fatalf("scan after 2, limit 2 = %v", got)
	}
	var n int
	if err := p.Update(ctx, func(tx *bbolt.Tx) error {
		var err error
		n, err = E2EE(tx, id).DeleteRange(InboxStore, nil, U64Key(3))
		return err
	}); err != nil || n != 3 {
		t.Fatalf("delete through 3 = %d, %v", n, err)
	}
	got = nil
	_ = p.View(func(tx *bbolt.Tx) error {
		e := E2EE(tx, id)
		if v, _ := e.Get(OTKStore, []byte("alg\x00x")); string(v) != "k" {
			t.Errorf("other store touched: %q", v)
		}
		return e.Scan(InboxStore, nil, nil, 0, func(_, v []byte) bool {
			got = append(got, string(v))
			return true
		})
	})
	if fmt.Sprint(got) != "[4 5]" {
		t.Fatalf("after delete = %v", got)
	}
	// Reading an identity that has nothing creates nothing.
	if err := p.View(func(tx *bbolt.Tx) error {
		v, err := E2EE(tx, "device/@b:x/E").Get(InboxStore, U64Key(1))
		if v != nil {
			t.Errorf("value from nothing: %q", v)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
