package storage

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"go.etcd.io/bbolt"
)

func TestRelationsIndex(t *testing.T) {
	p := openTest(t, Options{NoSync: true})
	ctx := context.Background()
	err := p.Update(ctx, func(tx *bbolt.Tx) error {
		rt := Room(tx, testRoom)
		for _, pos := range []uint64{3, 5, 7, 300} {
			if err := rt.PutRelation("$root", RoomRelation{Pos: pos, EventID: fmt.Sprintf("$c%d", pos), RelType: "m.thread"}); err != nil {
				return err
			}
		}
		// A parent whose ID extends the first one's must not leak into it.
		if err := rt.PutRelation("$root2", RoomRelation{Pos: 4, EventID: "$other", RelType: "m.reference"}); err != nil {
			return err
		}
		if err := rt.DeleteRelation("$root", 5); err != nil {
			return err
		}
		if err := rt.PutRelation("", RoomRelation{Pos: 1}); err == nil {
			t.Error("empty parent accepted")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	scan := func(parent string, lo, hi uint64, desc bool) []string {
		var out []string
		err := p.View(func(tx *bbolt.Tx) error {
			return Room(tx, testRoom).ScanRelations(parent, lo, hi, desc, func(r RoomRelation) (bool, error) {
				out = append(out, fmt.Sprintf("%s@%d", r.EventID, r.Pos))
				return true, nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, c := range []struct {
		parent string
		lo, hi uint64
		desc   bool
		want   []string
	}{
		{"$root", 1, ^uint64(0), false, []string{"$c3@3", "$c7@7", "$c300@300"}},
		{"$root", 1, ^uint64(0), true, []string{"$c300@300", "$c7@7", "$c3@3"}},
		{"$root", 4, 299, true, []string{"$c7@7"}},
		{"$root", 4, 299, false, []string{"$c7@7"}},
		{"$root", 8, 8, true, nil},
		{"$root2", 1, 10, true, []string{"$other@4"}},
		{"$nothing", 1, 10, true, nil},
	} {
		if got := scan(c.parent, c.lo, c.hi, c.desc); !slices.Equal(got, c.want) {
			t.Errorf("scan %s [%d,%d] desc=%v = %v, want %v", c.parent, c.lo, c.hi, c.desc, got, c.want)
		}
	}
	err = p.View(func(tx *bbolt.Tx) error {
		rt := Room(tx, testRoom)
		for parent, want := range map[string]bool{"$root": true, "$root2": true, "$roo": false, "$x": false} {
			if got, err := rt.HasRelations(parent); err != nil || got != want {
				t.Errorf("HasRelations(%s) = %v %v", parent, got, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestThreadsIndex(t *testing.T) {
	p := openTest(t, Options{NoSync: true})
	ctx := context.Background()
	err := p.Update(ctx, func(tx *bbolt.Tx) error {
		rt := Room(tx, testRoom)
		for _, th := range []struct {
			root string
			pos  uint64
		}{{"$a", 10}, {"$b", 12}, {"$a", 20}, {"$c", 15}} {
			cur, err := rt.Thread(th.root)
			if err != nil {
				return err
			}
			if cur == nil {
				cur = &RoomThread{}
			}
			cur.LatestPos, cur.Count = th.pos, cur.Count+1
			if err := rt.PutThread(th.root, cur); err != nil {
				return err
			}
		}
		if err := rt.PutThreadUser("$a", "@u:x"); err != nil {
			return err
		}
		return rt.PutThread("$c", nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	order := func(hi uint64) []string {
		var out []string
		err := p.View(func(tx *bbolt.Tx) error {
			return Room(tx, testRoom).ScanThreads(hi, func(pos uint64, root string) (bool, error) {
				out = append(out, fmt.Sprintf("%s@%d", root, pos))
				return true, nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := order(^uint64(0)); !slices.Equal(got, []string{"$a@20", "$b@12"}) {
		t.Errorf("threads by activity = %v", got)
	}
	if got := order(19); !slices.Equal(got, []string{"$b@12"}) {
		t.Errorf("threads up to 19 = %v", got)
	}
	if got := order(5); got != nil {
		t.Errorf("threads up to 5 = %v", got)
	}
	err = p.View(func(tx *bbolt.Tx) error {
		rt := Room(tx, testRoom)
		a, err := rt.Thread("$a")
		if err != nil || a == nil || a.Count != 2 || a.LatestPos != 20 {
			t.Errorf("thread $a = %+v %v", a, err)
		}
		if in, _ := rt.ThreadUser("$a", "@u:x"); !in {
			t.Error("@u:x did not take part in $a")
		}
		if in, _ := rt.ThreadUser("$b", "@u:x"); in {
			t.Error("@u:x took part in $b")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
