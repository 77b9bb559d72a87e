package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"go.etcd.io/bbolt"
)

const testRoom = "room/!r:test.local"

func TestRoomStoreRoundTrip(t *testing.T) {
	p := openTest(t, Options{NoSync: true})
	ctx := context.Background()
	// PDU bytes are kept exactly, including characters JSON encoders escape.
	pdu := []byte(`{"content":{"body":"<b>&amp;</b>"},"type":"m.room.message"}`)
	err := p.Update(ctx, func(tx *bbolt.Tx) error {
		rt := Room(tx, testRoom)
		if err := rt.PutMeta(RoomMeta{Version: "11", CreateID: "$c", Pos: 3, Depth: 3, Extremities: []string{"$m"}, Published: true}); err != nil {
			return err
		}
		for i, id := range []string{"$c", "$n", "$m"} {
			if err := rt.PutTimeline(uint64(i+1), id); err != nil {
				return err
			}
		}
		if err := rt.PutEvent("$m", &RoomEvent{PDU: pdu, Pos: 3, Device: "D", TxnID: "t1", ReplacesState: "$old"}); err != nil {
			return err
		}
		if err := rt.PutState("m.room.name", "", "$n"); err != nil {
			return err
		}
		if err := rt.PutState("m.room.member", "@a:x", "$c"); err != nil {
			return err
		}
		if err := rt.PutDelta(2, RoomStateDelta{Type: "m.room.name", New: "$n"}); err != nil {
			return err
		}
		if err := rt.PutTxn("@a:x", "D", "t1", "$m"); err != nil {
			return err
		}
		if err := rt.PutReceipt(RoomReceiptKey{Type: "m.read", User: "@a:x"}, RoomReceipt{EventID: "$m", TS: 5, EphemeralPos: 9}); err != nil {
			return err
		}
		if err := rt.PutReceipt(RoomReceiptKey{Type: "m.read", Thread: "main", User: "@a:x"}, RoomReceipt{EventID: "$n", TS: 6, EphemeralPos: 10}); err != nil {
			return err
		}
		for _, a := range []string{"#b:x", "#a:x"} {
			if err := rt.PutAlias(a); err != nil {
				return err
			}
		}
		return rt.DeleteAlias("#b:x")
	})
	if err != nil {
		t.Fatal(err)
	}
	err = p.View(func(tx *bbolt.Tx) error {
		rt := Room(tx, testRoom)
		m, ok, err := rt.Meta()
		if err != nil || !ok || m.Pos != 3 || !m.Published || m.Extremities[0] != "$m" {
			return fmt.Errorf("meta %+v %v %v", m, ok, err)
		}
		ev, err := rt.Event("$m")
		if err != nil || ev == nil || string(ev.PDU) != string(pdu) || ev.TxnID != "t1" || ev.ReplacesState != "$old" {
			return fmt.Errorf("event %+v %v", ev, err)
		}
		if ev, err := rt.Event("$missing"); ev != nil || err != nil {
			return fmt.Errorf("missing event %+v %v", ev, err)
		}
		var asc, desc []uint64
		if err := rt.ScanTimeline(1, 3, false, func(pos uint64, _ string) (bool, error) { asc = append(asc, pos); return true, nil }); err != nil {
			return err
		}
		if err := rt.ScanTimeline(2, 10, true, func(pos uint64, _ string) (bool, error) { desc = append(desc, pos); return true, nil }); err != nil {
			return err
		}
		if !slices.Equal(asc, []uint64{1, 2, 3}) || !slices.Equal(desc, []uint64{3, 2}) {
			return fmt.Errorf("timeline scans %v %v", asc, desc)
		}
		st, err := rt.State()
		if err != nil || len(st) != 2 {
			return fmt.Errorf("state %v %v", st, err)
		}
		var deltas []RoomStateDelta
		if err := rt.ScanDeltas(1, 3, true, func(_ uint64, d RoomStateDelta) (bool, error) { deltas = append(deltas, d); return true, nil }); err != nil {
			return err
		}
		if len(deltas) != 1 || deltas[0].New != "$n" {
			return fmt.Errorf("deltas %v", deltas)
		}
		if id, err := rt.Txn("@a:x", "D", "t1"); err != nil || id != "$m" {
			return fmt.Errorf("txn %q %v", id, err)
		}
		if id, _ := rt.Txn("@a:x", "E", "t1"); id != "" {
			return fmt.Errorf("another device's txn found %q", id)
		}
		n := 0
		if err := rt.Receipts(func(k RoomReceiptKey, rc RoomReceipt) error {
			n++
			if k.User != "@a:x" || k.Type != "m.read" {
				return fmt.Errorf("receipt key %+v", k)
			}
			return nil
		}); err != nil || n != 2 {
			return fmt.Errorf("receipts %d %v", n, err)
		}
		aliases, err := rt.Aliases()
		if err != nil || !slices.Equal(aliases, []string{"#a:x"}) {
			return fmt.Errorf("aliases %v %v", aliases, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Reading a room that was never written finds nothing and creates nothing.
func TestRoomStoreAbsentRoom(t *testing.T) {
	p := openTest(t, Options{NoSync: true})
	err := p.View(func(tx *bbolt.Tx) error {
		rt := Room(tx, "room/!ghost:x")
		if _, ok, err := rt.Meta(); ok || err != nil {
			return fmt.Errorf("meta of a ghost: %v %v", ok, err)
		}
		if st, err := rt.State(); st != nil || err != nil {
			return fmt.Errorf("state of a ghost: %v %v", st, err)
		}
		called := false
		err := rt.ScanTimeline(0, 100, true, func(uint64, string) (bool, error) { called = true; return true, nil })
		if err != nil || called {
			return fmt.Errorf("timeline of a ghost: %v %v", called, err)
		}
		if tx.Bucket([]byte("room/!ghost:x")) != nil {
			return fmt.Errorf("reading created the bucket")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Keys that do not fit bbolt are refused, not panicked on.
	err = p.Update(context.Background(), func(tx *bbolt.Tx) error {
		return Room(tx, testRoom).PutState("m.x", string(make([]byte, bbolt.MaxKeySize)), "$e")
	})
	if err == nil {
		t.Fatal("oversized state key accepted")
	}
}

func TestDirectoryAndAliasStores(t *testing.T) {
	p := openTest(t, Options{NoSync: true})
	ctx := context.Background()
	const dir, alias = "directory/public", "alias/#a:x"
	err := p.Update(ctx, func(tx *bbolt.Tx) error {
		if err := PutDirectoryEntry(tx, dir, "!r1:x", DirectoryEntry{Summary: json.RawMessage(`{"room_id":"!r1:x"}`), Pos: 4}); err != nil {
			return err
		}
		if err := PutDirectoryEntry(tx, dir, "!r2:x", DirectoryEntry{Summary: json.RawMessage(`{"room_id":"!r2:x"}`), Pos: 1}); err != nil {
			return err
		}
		if err := DeleteDirectoryEntry(tx, dir, "!r2:x"); err != nil {
			return err
		}
		return PutAliasMapping(tx, alias, AliasMapping{RoomID: "!r1:x", Creator: "@a:x"})
	})
	if err != nil {
		t.Fatal(err)
	}
	err = p.View(func(tx *bbolt.Tx) error {
		entries, err := DirectoryEntries(tx, dir)
		if err != nil || len(entries) != 1 || entries["!r1:x"].Pos != 4 {
			return fmt.Errorf("entries %v %v", entries, err)
		}
		m, ok, err := AliasMappingOf(tx, alias)
		if err != nil || !ok || m.RoomID != "!r1:x" || m.Creator != "@a:x" {
			return fmt.Errorf("alias %+v %v %v", m, ok, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Update(ctx, func(tx *bbolt.Tx) error { return DeleteAliasMapping(tx, alias) }); err != nil {
		t.Fatal(err)
	}
	_ = p.View(func(tx *bbolt.Tx) error {
		if _, ok, _ := AliasMappingOf(tx, alias); ok {
			t.Fatal("deleted alias still there")
		}
		return nil
	})
}
