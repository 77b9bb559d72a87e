package storage

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"go.etcd.io/bbolt"
)

const testFQ = "fedqueue/b.test"

func fqUpdate(t *testing.T, p *Partition, fn func(tx *bbolt.Tx, m *FedQueueMeta) error) FedQueueMeta {
	t.Helper()
	var next FedQueueMeta
	if err := p.Update(context.Background(), func(tx *bbolt.Tx) error {
		m, err := FedQueueMetaOf(tx, testFQ)
		if err != nil {
			return err
		}
		if err := fn(tx, &m); err != nil {
			return err
		}
		next = m
		return PutFedQueueMeta(tx, testFQ, m)
	}); err != nil {
		t.Fatal(err)
	}
	return next
}

func fqPDU(room string, i int) FedQueuePDU {
	return FedQueuePDU{RoomID: room, PDU: fmt.Appendf(nil, `{"event_id":"$%s-%d","body":"<&>"}`, room, i)}
}

func fqHead(t *testing.T, p *Partition, maxPDUs, maxEDUs, maxBytes int) ([]FedQueuePDU, []FedQueueEDU) {
	t.Helper()
	var pdus []FedQueuePDU
	var edus []FedQueueEDU
	if err := p.View(func(tx *bbolt.Tx) error {
		var err error
		pdus, edus, err = FedQueueHead(tx, testFQ, maxPDUs, maxEDUs, maxBytes)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return pdus, edus
}

// Items come back in order, byte for byte, bounded by count and size; a
// deleted batch leaves the rest; the header counts what is stored.
func TestFedQueueStoreOrderAndDelete(t *testing.T) {
	p := openTest(t, Options{NoSync: true})
	var in []FedQueuePDU
	for i := range 5 {
		in = append(in, fqPDU("!a", i))
	}
	m := fqUpdate(t, p, func(tx *bbolt.Tx, m *FedQueueMeta) error {
		return AppendFedQueue(tx, testFQ, m, in, []FedQueueEDU{{Type: "m.x", Content: []byte(`{"a":1}`)}})
	})
	if m.PDUs != 5 || m.EDUs != 1 || m.Seq != 6 {
		t.Fatalf("meta = %+v", m)
	}
	pdus, edus := fqHead(t, p, 3, 10, 1<<20)
	if len(pdus) != 3 || len(edus) != 1 {
		t.Fatalf("head: %d PDUs %d EDUs", len(pdus), len(edus))
	}
	for i, pd := range pdus {
		if string(pd.PDU) != string(in[i].PDU) || pd.RoomID != "!a" || pd.Seq != uint64(i+1) {
			t.Fatalf("PDU %d = %+v", i, pd)
		}
	}
	if edus[0].Type != "m.x" || string(edus[0].Content) != `{"a":1}` {
		t.Fatalf("EDU = %+v", edus[0])
	}
	// The byte bound still lets one item through.
	if pdus, edus := fqHead(t, p, 50, 100, 1); len(pdus) != 1 || len(edus) != 0 {
		t.Fatalf("byte-bounded head: %d PDUs %d EDUs", len(pdus), len(edus))
	}
	m = fqUpdate(t, p, func(tx *bbolt.Tx, m *FedQueueMeta) error {
		return DeleteFedQueueItems(tx, testFQ, m, []uint64{1, 2, 3}, []uint64{6})
	})
	if m.PDUs != 2 || m.EDUs != 0 {
		t.Fatalf("after delete: %+v", m)
	}
	pdus, _ = fqHead(t, p, 50, 100, 1<<20)
	if len(pdus) != 2 || pdus[0].Seq != 4 {
		t.Fatalf("after delete head = %+v", pdus)
	}
	var pending []string
	_ = p.View(func(tx *bbolt.Tx) error {
		var err error
		pending, err = FedQueuesPending(tx, "fedqueue/")
		return err
	})
	if !slices.Equal(pending, []string{testFQ}) {
		t.Fatalf("pending = %v", pending)
	}
	fqUpdate(t, p, func(tx *bbolt.Tx, m *FedQueueMeta) error {
		return DeleteFedQueueItems(tx, testFQ, m, []uint64{4, 5}, nil)
	})
	_ = p.View(func(tx *bbolt.Tx) error {
		var err error
		pending, err = FedQueuesPending(tx, "fedqueue/")
		return err
	})
	if len(pending) != 0 {
		t.Fatalf("pending after emptying = %v", pending)
	}
}

// A coalescing key replaces the queued EDU, except one in the batch in
// flight: that one stays and the newer is queued after it.
func TestFedQueueStoreCoalesce(t *testing.T) {
	p := openTest(t, Options{NoSync: true})
	typing := func(v string) FedQueueEDU {
		return FedQueueEDU{Type: "m.typing", Key: "!r @u", Content: []byte(`{"typing":` + v + `}`)}
	}
	m := fqUpdate(t, p, func(tx *bbolt.Tx, m *FedQueueMeta) error {
		if err := AppendFedQueue(tx, testFQ, m, nil, []FedQueueEDU{typing("1"), {Type: "m.other", Content: []byte(`{}`)}}); err != nil {
			return err
		}
		return AppendFedQueue(tx, testFQ, m, nil, []FedQueueEDU{typing("2")})
	})
	_, edus := fqHead(t, p, 50, 100, 1<<20)
	if m.EDUs != 2 || len(edus) != 2 || edus[0].Type != "m.other" || string(edus[1].Content) != `{"typing":2}` {
		t.Fatalf("coalesced: meta %+v edus %+v", m, edus)
	}
	m = fqUpdate(t, p, func(tx *bbolt.Tx, m *FedQueueMeta) error {
		m.Batch = &FedQueueBatch{TxnID: "t", EDUs: []uint64{edus[0].Seq, edus[1].Seq}}
		return AppendFedQueue(tx, testFQ, m, nil, []FedQueueEDU{typing("3")})
	})
	_, edus = fqHead(t, p, 50, 100, 1<<20)
	if m.EDUs != 3 || len(edus) != 3 || string(edus[2].Content) != `{"typing":3}` {
		t.Fatalf("in-flight EDU replaced: meta %+v edus %+v", m, edus)
	}
	// Deleting the batch keeps the newer EDU's key: a fourth replaces the third.
	fqUpdate(t, p, func(tx *bbolt.Tx, m *FedQueueMeta) error {
		if err := DeleteFedQueueItems(tx, testFQ, m, nil, m.Batch.EDUs); err != nil {
			return err
		}
		m.Batch = nil
		return AppendFedQueue(tx, testFQ, m, nil, []FedQueueEDU{typing("4")})
	})
	_, edus = fqHead(t, p, 50, 100, 1<<20)
	if len(edus) != 1 || string(edus[0].Content) != `{"typing":4}` {
		t.Fatalf("after batch: %+v", edus)
	}
}

// Trimming drops the oldest PDUs, never the batch in flight, and keeps each
// room's newest ones.
func TestFedQueueStoreTrim(t *testing.T) {
	p := openTest(t, Options{NoSync: true})
	m := fqUpdate(t, p, func(tx *bbolt.Tx, m *FedQueueMeta) error {
		var in []FedQueuePDU
		for i := range 20 {
			in = append(in, fqPDU("!busy", i))
		}
		in = append(in, fqPDU("!quiet", 0))
		for i := 20; i < 30; i++ {
			in = append(in, fqPDU("!busy", i))
		}
		if err := AppendFedQueue(tx, testFQ, m, in, nil); err != nil {
			return err
		}
		m.Batch = &FedQueueBatch{TxnID: "t", PDUs: []uint64{1, 2}}
		return nil
	})
	var dropped int
	m = fqUpdate(t, p, func(tx *bbolt.Tx, m *FedQueueMeta) error {
		var err error
		dropped, err = TrimFedQueuePDUs(tx, testFQ, m, 8, 3)
		return err
	})
	pdus, _ := fqHead(t, p, 50, 100, 1<<20)
	var got []string
	for _, pd := range pdus {
		got = append(got, fmt.Sprintf("%s@%d", pd.RoomID, pd.Seq))
	}
	// Kept: the batch (1, 2), !quiet's only event (21), !busy's newest.
	want := []string{"!busy@1", "!busy@2", "!quiet@21", "!busy@27", "!busy@28", "!busy@29", "!busy@30", "!busy@31"}
	if !slices.Equal(got, want) || m.PDUs != 8 || dropped != 23 {
		t.Fatalf("trimmed to %v (meta %d, dropped %d), want %v", got, m.PDUs, dropped, want)
	}
	// A tighter bound takes each room down to its newest, then the oldest.
	m = fqUpdate(t, p, func(tx *bbolt.Tx, m *FedQueueMeta) error {
		_, err := TrimFedQueuePDUs(tx, testFQ, m, 4, 3)
		return err
	})
	pdus, _ = fqHead(t, p, 50, 100, 1<<20)
	got = got[:0]
	for _, pd := range pdus {
		got = append(got, fmt.Sprintf("%s@%d", pd.RoomID, pd.Seq))
	}
	want = []string{"!busy@1", "!busy@2", "!quiet@21", "!busy@31"}
	if !slices.Equal(got, want) || m.PDUs != 4 {
		t.Fatalf("trimmed to %v, want %v", got, want)
	}
	// EDUs: the oldest go, the batch's stay.
	m = fqUpdate(t, p, func(tx *bbolt.Tx, m *FedQueueMeta) error {
		var edus []FedQueueEDU
		for i := range 6 {
			edus = append(edus, FedQueueEDU{Type: "m.x", Content: fmt.Appendf(nil, `{"i":%d}`, i)})
		}
		if err := AppendFedQueue(tx, testFQ, m, nil, edus); err != nil {
			return err
		}
		m.Batch.EDUs = []uint64{m.Seq - 5}
		_, err := TrimFedQueueEDUs(tx, testFQ, m, 3)
		return err
	})
	_, edus := fqHead(t, p, 50, 100, 1<<20)
	got = got[:0]
	for _, e := range edus {
		got = append(got, string(e.Content))
	}
	if want := []string{`{"i":0}`, `{"i":4}`, `{"i":5}`}; !slices.Equal(got, want) || m.EDUs != 3 {
		t.Fatalf("EDUs trimmed to %v, want %v", got, want)
	}
}
