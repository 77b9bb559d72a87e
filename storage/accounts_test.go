package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"

	"go.etcd.io/bbolt"
)

const testUser = "user/@alice:example.org"

func userUpdate(t *testing.T, p *Partition, fn func(u UserTx) error) {
	t.Helper()
	if err := p.Update(context.Background(), func(tx *bbolt.Tx) error { return fn(User(tx, testUser)) }); err != nil {
		t.Fatal(err)
	}
}

func userView(t *testing.T, p *Partition, fn func(u UserTx) error) {
	t.Helper()
	if err := p.View(func(tx *bbolt.Tx) error { return fn(User(tx, testUser)) }); err != nil {
		t.Fatal(err)
	}
}

func TestUserLoadEmptyCreatesNothing(t *testing.T) {
	p := openTest(t, Options{})
	var st *UserState
	userView(t, p, func(u UserTx) error {
		var err error
		st, err = u.Load()
		return err
	})
	if st.Account != nil || len(st.Rooms) != 0 || len(st.Devices) != 0 || len(st.Records) != 0 {
		t.Fatalf("empty user loaded as %+v", st)
	}
	if err := p.View(func(tx *bbolt.Tx) error {
		if tx.Bucket([]byte(testUser)) != nil {
			return fmt.Errorf("reading created the user's bucket")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestUserLoadRoundTrip(t *testing.T) {
	p := openTest(t, Options{})
	msg := "hi"
	userUpdate(t, p, func(u UserTx) error {
		if err := u.PutAccount(&Account{PasswordHash: []byte("$2a$"), Admin: true, CreatedTS: 42,
			AcceptedTerms: map[string]string{"tos": "1"}}); err != nil {
			return err
		}
		if err := u.PutProfile(map[string]json.RawMessage{"displayname": json.RawMessage(`"Alice"`)}); err != nil {
			return err
		}
		if err := u.PutPresence(&Presence{State: "online", StatusMsg: &msg, LastActiveTS: 7, Seq: 3}); err != nil {
			return err
		}
		if err := u.PutMeta(UserMeta{Seq: 3, LastFilter: 2, Filters: 2, AccountData: 1}); err != nil {
			return err
		}
		if err := u.PutRoom("!r:example.org", UserRoom{Membership: "join", Pos: 9}); err != nil {
			return err
		}
		if err := u.PutDevice("DEV"); err != nil {
			return err
		}
		return u.PutSyncRecord(5, &SyncRecord{Base: 4, Depth: 1, Positions: map[string]uint64{"!r:example.org": 9}}, nil)
	})
	var st *UserState
	userView(t, p, func(u UserTx) error {
		var err error
		st, err = u.Load()
		return err
	})
	if st.Account == nil || !st.Account.Admin || st.Account.CreatedTS != 42 || st.Account.AcceptedTerms["tos"] != "1" {
		t.Fatalf("account = %+v", st.Account)
	}
	if string(st.Profile["displayname"]) != `"Alice"` || st.Presence == nil || *st.Presence.StatusMsg != "hi" {
		t.Fatalf("profile %v presence %+v", st.Profile, st.Presence)
	}
	if st.Meta != (UserMeta{Seq: 3, LastFilter: 2, Filters: 2, AccountData: 1}) {
		t.Fatalf("meta = %+v", st.Meta)
	}
	if st.Rooms["!r:example.org"] != (UserRoom{Membership: "join", Pos: 9}) || !st.Devices["DEV"] {
		t.Fatalf("rooms %v devices %v", st.Rooms, st.Devices)
	}
	if st.Records[5] != (SyncRecordMeta{Base: 4, Depth: 1}) || len(st.Records) != 1 {
		t.Fatalf("records = %v", st.Records)
	}
	userUpdate(t, p, func(u UserTx) error {
		if err := u.DeleteRoom("!r:example.org"); err != nil {
			return err
		}
		return u.ClearDevices()
	})
	userView(t, p, func(u UserTx) error {
		var err error
		st, err = u.Load()
		return err
	})
	if len(st.Rooms) != 0 || len(st.Devices) != 0 {
		t.Fatalf("after delete: rooms %v devices %v", st.Rooms, st.Devices)
	}
}

// TestAccountDataSince: rewriting an entry moves it to its new sequence,
// so a scan from any sequence sees each entry once, at its last write.
func TestAccountDataSince(t *testing.T) {
	p := openTest(t, Options{})
	writes := []struct {
		room, typ string
		seq       uint64
		content   string
	}{
		{"", "m.a", 1, `{"v":1}`},
		{"!r:x", "m.b", 2, `{"v":2}`},
		{"", "m.c", 3, `{"v":3}`},
		{"", "m.a", 4, `{"v":4}`},
	}
	for _, w := range writes {
		userUpdate(t, p, func(u UserTx) error {
			created, err := u.PutAccountData(w.room, w.typ, w.seq, json.RawMessage(w.content))
			if created != (w.seq != 4) {
				return fmt.Errorf("write %d: created = %v", w.seq, created)
			}
			return err
		})
	}
	since := func(s uint64, limit int) string {
		var out []string
		userView(t, p, func(u UserTx) error {
			changes, err := u.AccountDataSince(s, limit)
			for _, c := range changes {
				out = append(out, fmt.Sprintf("%s/%s@%d=%s", c.Room, c.Type, c.Seq, c.Content))
			}
			return err
		})
		return fmt.Sprint(out)
	}
	if got := since(0, 0); got != `[!r:x/m.b@2={"v":2} /m.c@3={"v":3} /m.a@4={"v":4}]` {
		t.Fatalf("since 0 = %s", got)
	}
	if got := since(2, 0); got != `[/m.c@3={"v":3} /m.a@4={"v":4}]` {
		t.Fatalf("since 2 = %s", got)
	}
	if got := since(0, 1); got != `[!r:x/m.b@2={"v":2}]` {
		t.Fatalf("since 0 limit 1 = %s", got)
	}
	if got := since(4, 0); got != `[]` {
		t.Fatalf("since 4 = %s", got)
	}
	userView(t, p, func(u UserTx) error {
		e, err := u.AccountData("!r:x", "m.b")
		if err != nil || e == nil || e.Seq != 2 {
			return fmt.Errorf("room entry = %+v, %v", e, err)
		}
		if e, err := u.AccountData("", "m.b"); e != nil || err != nil {
			return fmt.Errorf("global m.b = %+v, %v", e, err)
		}
		return nil
	})
	userUpdate(t, p, func(u UserTx) error { return u.ClearAccountData() })
	if got := since(0, 0); got != `[]` {
		t.Fatalf("after clear = %s", got)
	}
}

func TestFiltersDedupAndEvict(t *testing.T) {
	p := openTest(t, Options{})
	f1, f2 := []byte(`{"a":1}`), []byte(`{"b":2}`)
	userUpdate(t, p, func(u UserTx) error { return u.PutFilter(1, f1, false) })
	userUpdate(t, p, func(u UserTx) error { return u.PutFilter(2, f2, false) })
	userView(t, p, func(u UserTx) error {
		id, ok, err := u.FilterByHash(FilterHash(f2))
		if err != nil || !ok || id != 2 {
			return fmt.Errorf("filter by hash = %d %v %v", id, ok, err)
		}
		return nil
	})
	// Adding a third with eviction drops the oldest, and its hash.
	userUpdate(t, p, func(u UserTx) error { return u.PutFilter(3, []byte(`{"c":3}`), true) })
	userView(t, p, func(u UserTx) error {
		if f, err := u.Filter(1); f != nil || err != nil {
			return fmt.Errorf("evicted filter = %s, %v", f, err)
		}
		if _, ok, _ := u.FilterByHash(FilterHash(f1)); ok {
			return fmt.Errorf("evicted filter's hash kept")
		}
		if f, err := u.Filter(2); string(f) != string(f2) || err != nil {
			return fmt.Errorf("filter 2 = %s, %v", f, err)
		}
		return nil
	})
}

func TestSyncRecordsPutAndPrune(t *testing.T) {
	p := openTest(t, Options{})
	rec := &SyncRecord{Positions: map[string]uint64{"!a:x": 3}, Ephemeral: map[string]uint64{"!a:x": 1},
		Memberships: map[string]string{"!a:x": "join"}, Seq: 8}
	userUpdate(t, p, func(u UserTx) error { return u.PutSyncRecord(1, rec, nil) })
	userUpdate(t, p, func(u UserTx) error { return u.PutSyncRecord(2, &SyncRecord{Base: 1, Depth: 1}, nil) })
	userUpdate(t, p, func(u UserTx) error { return u.PutSyncRecord(3, &SyncRecord{Seq: 9}, []uint64{1, 2}) })
	userView(t, p, func(u UserTx) error {
		for _, n := range []uint64{1, 2} {
			if r, err := u.SyncRecord(n); r != nil || err != nil {
				return fmt.Errorf("pruned record %d = %+v, %v", n, r, err)
			}
		}
		r, err := u.SyncRecord(3)
		if err != nil || r == nil || r.Seq != 9 {
			return fmt.Errorf("record 3 = %+v, %v", r, err)
		}
		return nil
	})
	// A record is never written and pruned at once.
	err := p.Update(context.Background(), func(tx *bbolt.Tx) error {
		return User(tx, testUser).PutSyncRecord(4, rec, []uint64{4})
	})
	if err == nil {
		t.Fatal("writing and pruning the same record succeeded")
	}
	userUpdate(t, p, func(u UserTx) error { return u.PutSyncRecord(5, rec, nil) })
	userView(t, p, func(u UserTx) error {
		r, err := u.SyncRecord(5)
		if err != nil || !reflect.DeepEqual(r, rec) {
			return fmt.Errorf("record 5 = %+v, %v", r, err)
		}
		return nil
	})
}

func TestDeviceStore(t *testing.T) {
	p := openTest(t, Options{})
	const id = "device/@alice:example.org/DEV"
	d := &Device{DisplayName: "Phone", TokenHash: make([]byte, 32), LastSeenIP: "10.0.0.1", LastSeenTS: 5, CreatedTS: 1}
	if err := p.Update(context.Background(), func(tx *bbolt.Tx) error { return PutDevice(tx, id, d) }); err != nil {
		t.Fatal(err)
	}
	var got *Device
	if err := p.View(func(tx *bbolt.Tx) error {
		var err error
		got, err = LoadDevice(tx, id)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, d) {
		t.Fatalf("device = %+v, want %+v", got, d)
	}
	if err := p.Update(context.Background(), func(tx *bbolt.Tx) error { return DeleteIdentity(tx, id) }); err != nil {
		t.Fatal(err)
	}
	if err := p.View(func(tx *bbolt.Tx) error {
		var err error
		got, err = LoadDevice(tx, id)
		return err
	}); err != nil || got != nil {
		t.Fatalf("deleted device = %+v, %v", got, err)
	}
}
