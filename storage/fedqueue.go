package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"

	"go.etcd.io/bbolt"
)

// The outbound federation queue of one destination server, kept by its
// queue actor (identity fedqueue/<server name>), one sub-bucket per kind:
//
//	fqmeta     the queue's header (FedQueueMeta)
//	fqpdus     sequence (u64) → FedQueuePDU, in the order they were queued
//	fqrooms    room ID 0x00 sequence (u64) → nothing: the PDUs of each room,
//	           to find a room's newest events when the queue is trimmed
//	fqedus     sequence (u64) → FedQueueEDU
//	fqedukeys  EDU type 0x00 coalescing key → sequence of the EDU queued
//	           under it
//
// PDUs and EDUs share one sequence. The batch in flight (FedQueueMeta.Batch)
// lists the sequences it carries: its items stay stored until the batch is
// done, and neither coalescing nor trimming touches them, so every retry
// of a transaction carries exactly what its first attempt did.
const (
	fqMetaStore    = "fqmeta"
	fqPDUsStore    = "fqpdus"
	fqRoomsStore   = "fqrooms"
	fqEDUsStore    = "fqedus"
	fqEDUKeysStore = "fqedukeys"
)

var fqMetaKey = []byte("meta")

// FedQueueMeta is the header of a queue.
type FedQueueMeta struct {
	// Seq is the last sequence given to a queued item.
	Seq uint64 `json:"seq"`
	// PDUs and EDUs count the items stored, in flight included.
	PDUs int `json:"pdus"`
	EDUs int `json:"edus"`
	// Txns counts the transactions made, for their IDs.
	Txns uint64 `json:"txns"`
	// Batch is the transaction being sent, nil when none.
	Batch *FedQueueBatch `json:"batch,omitempty"`
	// Failures counts the failed attempts since the last success, and
	// RetryAtMS is when the next attempt may start (after a failure).
	Failures  int   `json:"failures,omitempty"`
	RetryAtMS int64 `json:"retry_at_ms,omitempty"`
}

// FedQueueBatch is one transaction: its ID and the sequences of its items.
type FedQueueBatch struct {
	TxnID string   `json:"txn_id"`
	PDUs  []uint64 `json:"pdus,omitempty"`
	EDUs  []uint64 `json:"edus,omitempty"`
}

// Contains reports whether seq is one of the batch's items.
func (b *FedQueueBatch) Contains(seq uint64) bool {
	if b == nil {
		return false
	}
	for _, s := range b.PDUs {
		if s == seq {
			return true
		}
	}
	for _, s := range b.EDUs {
		if s == seq {
			return true
		}
	}
	return false
}

// FedQueuePDU is one queued PDU.
type FedQueuePDU struct {
	Seq    uint64
	RoomID string
	// PDU is the event's JSON as it is sent.
	PDU []byte
}

// FedQueueEDU is one queued EDU.
type FedQueueEDU struct {
	Seq  uint64
	Type string
	// Key coalesces (see AppendFedQueue); "" for none.
	Key string
	// Content is the EDU's content, a JSON object.
	Content []byte
}

// FedQueueMetaOf reads the header of the queue identity (zero when absent).
func FedQueueMetaOf(tx *bbolt.Tx, identity string) (FedQueueMeta, error) {
	var m FedQueueMeta
	b, err := Namespace(tx, false, identity, fqMetaStore)
	if err != nil || b == nil {
		return m, err
	}
	v := b.Get(fqMetaKey)
	if v == nil {
		return m, nil
	}
	if err := json.Unmarshal(v, &m); err != nil {
		return m, fmt.Errorf("storage: fed queue %s: decode header: %w", identity, err)
	}
	return m, nil
}

// PutFedQueueMeta stores the header of the queue identity.
func PutFedQueueMeta(tx *bbolt.Tx, identity string, m FedQueueMeta) error {
	b, err := Namespace(tx, true, identity, fqMetaStore)
	if err != nil {
		return fmt.Errorf("storage: fed queue %s: %w", identity, err)
	}
	v, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("storage: fed queue %s: encode header: %w", identity, err)
	}
	return b.Put(fqMetaKey, v)
}

// fqBuckets opens (or creates) the item buckets of a queue.
type fqBuckets struct {
	pdus, rooms, edus, keys *bbolt.Bucket
}

func openFQ(tx *bbolt.Tx, identity string, create bool) (*fqBuckets, error) {
	var q fqBuckets
	for _, s := range []struct {
		store string
		dst   **bbolt.Bucket
	}{{fqPDUsStore, &q.pdus}, {fqRoomsStore, &q.rooms}, {fqEDUsStore, &q.edus}, {fqEDUKeysStore, &q.keys}} {
		b, err := Namespace(tx, create, identity, s.store)
		if err != nil {
			return nil, fmt.Errorf("storage: fed queue %s: %w", identity, err)
		}
		*s.dst = b
	}
	return &q, nil
}

func roomSeqKey(roomID string, seq uint64) []byte {
	return AppendU64Key(append([]byte(roomID), 0), seq)
}

func eduKey(typ, key string) []byte { return append(append([]byte(typ), 0), key...) }

// AppendFedQueue stores pdus and edus at the end of the queue identity,
// giving them sequences, and updates m (the caller stores it). An EDU with
// a coalescing key replaces the one queued under the same type and key,
// unless that one is in m.Batch (then both stay, the newer sent after).
// Room IDs and EDU types must not contain a NUL byte.
func AppendFedQueue(tx *bbolt.Tx, identity string, m *FedQueueMeta, pdus []FedQueuePDU, edus []FedQueueEDU) error {
	q, err := openFQ(tx, identity, true)
	if err != nil {
		return err
	}
	for _, p := range pdus {
		if bytes.IndexByte([]byte(p.RoomID), 0) >= 0 {
			return fmt.Errorf("storage: fed queue %s: room ID with a NUL byte: %w", identity, ErrBadKey)
		}
		m.Seq++
		if err := q.pdus.Put(U64Key(m.Seq), encodeFQ([]byte(p.RoomID), p.PDU)); err != nil {
			return err
		}
		if err := q.rooms.Put(roomSeqKey(p.RoomID, m.Seq), nil); err != nil {
			return err
		}
		m.PDUs++
	}
	for _, e := range edus {
		if bytes.IndexByte([]byte(e.Type), 0) >= 0 {
			return fmt.Errorf("storage: fed queue %s: EDU type with a NUL byte: %w", identity, ErrBadKey)
		}
		m.Seq++
		v := encodeFQ([]byte(e.Type), []byte(e.Key), e.Content)
		if e.Key != "" {
			k := eduKey(e.Type, e.Key)
			if old := q.keys.Get(k); old != nil {
				seq, err := ParseU64Key(old)
				if err != nil {
					return err
				}
				if !m.Batch.Contains(seq) {
					if q.edus.Get(U64Key(seq)) != nil {
						m.EDUs--
					}
					if err := q.edus.Delete(U64Key(seq)); err != nil {
						return err
					}
				}
			}
			if err := q.keys.Put(k, U64Key(m.Seq)); err != nil {
				return err
			}
		}
		if err := q.edus.Put(U64Key(m.Seq), v); err != nil {
			return err
		}
		m.EDUs++
	}
	return nil
}

// FedQueueHead returns the oldest items of the queue identity, at most
// maxPDUs PDUs and maxEDUs EDUs, and no more than maxBytes of them together
// (at least one item when there is any).
func FedQueueHead(tx *bbolt.Tx, identity string, maxPDUs, maxEDUs, maxBytes int) ([]FedQueuePDU, []FedQueueEDU, error) {
	q, err := openFQ(tx, identity, false)
	if err != nil {
		return nil, nil, err
	}
	var pdus []FedQueuePDU
	var edus []FedQueueEDU
	size := 0
	if q.pdus != nil {
		c := q.pdus.Cursor()
		for k, v := c.First(); k != nil && len(pdus) < maxPDUs; k, v = c.Next() {
			if size > 0 && size+len(v) > maxBytes {
				break
			}
			p, err := decodeFQPDU(identity, k, v)
			if err != nil {
				return nil, nil, err
			}
			size += len(v)
			pdus = append(pdus, p)
		}
	}
	if q.edus != nil {
		c := q.edus.Cursor()
		for k, v := c.First(); k != nil && len(edus) < maxEDUs; k, v = c.Next() {
			if size > 0 && size+len(v) > maxBytes {
				break
			}
			e, err := decodeFQEDU(identity, k, v)
			if err != nil {
				return nil, nil, err
			}
			size += len(v)
			edus = append(edus, e)
		}
	}
	return pdus, edus, nil
}

// FedQueueItems returns the items of batch still stored, in batch order.
func FedQueueItems(tx *bbolt.Tx, identity string, batch *FedQueueBatch) ([]FedQueuePDU, []FedQueueEDU, error) {
	q, err := openFQ(tx, identity, false)
	if err != nil || batch == nil {
		return nil, nil, err
	}
	var pdus []FedQueuePDU
	var edus []FedQueueEDU
	for _, seq := range batch.PDUs {
		if q.pdus == nil {
			break
		}
		k := U64Key(seq)
		if v := q.pdus.Get(k); v != nil {
			p, err := decodeFQPDU(identity, k, v)
			if err != nil {
				return nil, nil, err
			}
			pdus = append(pdus, p)
		}
	}
	for _, seq := range batch.EDUs {
		if q.edus == nil {
			break
		}
		k := U64Key(seq)
		if v := q.edus.Get(k); v != nil {
			e, err := decodeFQEDU(identity, k, v)
			if err != nil {
				return nil, nil, err
			}
			edus = append(edus, e)
		}
	}
	return pdus, edus, nil
}

// DeleteFedQueueItems removes the PDUs and EDUs of the given sequences
// from the queue identity and updates m's counts.
func DeleteFedQueueItems(tx *bbolt.Tx, identity string, m *FedQueueMeta, pdus, edus []uint64) error {
	q, err := openFQ(tx, identity, true)
	if err != nil {
		return err
	}
	for _, seq := range pdus {
		if err := q.deletePDU(identity, m, seq); err != nil {
			return err
		}
	}
	for _, seq := range edus {
		k := U64Key(seq)
		v := q.edus.Get(k)
		if v == nil {
			continue
		}
		e, err := decodeFQEDU(identity, k, v)
		if err != nil {
			return err
		}
		if e.Key != "" {
			ek := eduKey(e.Type, e.Key)
			if cur := q.keys.Get(ek); bytes.Equal(cur, k) {
				if err := q.keys.Delete(ek); err != nil {
					return err
				}
			}
		}
		if err := q.edus.Delete(k); err != nil {
			return err
		}
		m.EDUs--
	}
	return nil
}

func (q *fqBuckets) deletePDU(identity string, m *FedQueueMeta, seq uint64) error {
	k := U64Key(seq)
	v := q.pdus.Get(k)
	if v == nil {
		return nil
	}
	p, err := decodeFQPDU(identity, k, v)
	if err != nil {
		return err
	}
	if err := q.rooms.Delete(roomSeqKey(p.RoomID, seq)); err != nil {
		return err
	}
	if err := q.pdus.Delete(k); err != nil {
		return err
	}
	m.PDUs--
	return nil
}

// TrimFedQueuePDUs drops the oldest PDUs of the queue identity until at
// most target remain, sparing the batch in flight and, in a first pass,
// the keepPerRoom newest PDUs of each room, then in a second pass each
// room's newest one: the destination fetches what is missing before them
// with /get_missing_events. Only a queue with more rooms than target
// loses rooms' newest events (oldest first). It returns how many PDUs it
// dropped.
func TrimFedQueuePDUs(tx *bbolt.Tx, identity string, m *FedQueueMeta, target, keepPerRoom int) (int, error) {
	if m.PDUs <= target {
		return 0, nil
	}
	q, err := openFQ(tx, identity, true)
	if err != nil {
		return 0, err
	}
	dropped := 0
	for _, keep := range []int{keepPerRoom, 1, 0} {
		var drop []uint64
		excess := m.PDUs - target
		c := q.pdus.Cursor()
		for k, v := c.First(); k != nil && len(drop) < excess; k, v = c.Next() {
			p, err := decodeFQPDU(identity, k, v)
			if err != nil {
				return dropped, err
			}
			if m.Batch.Contains(p.Seq) {
				continue
			}
			if keep > 0 && q.newerInRoom(p.RoomID, p.Seq, keep) < keep {
				continue
			}
			drop = append(drop, p.Seq)
		}
		// Deleting after the scan: a bbolt cursor must not walk keys
		// deleted under it.
		for _, seq := range drop {
			if err := q.deletePDU(identity, m, seq); err != nil {
				return dropped, err
			}
		}
		dropped += len(drop)
		if m.PDUs <= target {
			break
		}
	}
	return dropped, nil
}

// newerInRoom counts the PDUs of roomID queued after seq, up to limit.
func (q *fqBuckets) newerInRoom(roomID string, seq uint64, limit int) int {
	prefix := append([]byte(roomID), 0)
	c := q.rooms.Cursor()
	n := 0
	k, _ := c.Seek(roomSeqKey(roomID, seq))
	if k != nil && bytes.Equal(k, roomSeqKey(roomID, seq)) {
		k, _ = c.Next()
	}
	for ; k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8 && n < limit; k, _ = c.Next() {
		n++
	}
	return n
}

// TrimFedQueueEDUs drops the oldest EDUs outside the batch in flight until
// at most target remain, and returns how many it dropped.
func TrimFedQueueEDUs(tx *bbolt.Tx, identity string, m *FedQueueMeta, target int) (int, error) {
	if m.EDUs <= target {
		return 0, nil
	}
	q, err := openFQ(tx, identity, true)
	if err != nil {
		return 0, err
	}
	var drop []uint64
	c := q.edus.Cursor()
	for k, _ := c.First(); k != nil && len(drop) < m.EDUs-target; k, _ = c.Next() {
		seq, err := ParseU64Key(k)
		if err != nil {
			return 0, err
		}
		if !m.Batch.Contains(seq) {
			drop = append(drop, seq)
		}
	}
	if err := DeleteFedQueueItems(tx, identity, m, nil, drop); err != nil {
		return 0, err
	}
	return len(drop), nil
}

// FedQueuesPending returns the identities, among the top-level buckets of
// tx's partition starting with prefix (e.g. "fedqueue/"), of the queues
// holding at least one item.
func FedQueuesPending(tx *bbolt.Tx, prefix string) ([]string, error) {
	if prefix == "" {
		return nil, fmt.Errorf("storage: fed queues: empty prefix: %w", ErrBadKey)
	}
	var out []string
	c := tx.Cursor()
	for k, v := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, v = c.Next() {
		if v != nil {
			continue // a plain key, not an identity's bucket
		}
		identity := string(k)
		for _, store := range []string{fqPDUsStore, fqEDUsStore} {
			b, err := Namespace(tx, false, identity, store)
			if err != nil {
				return nil, err
			}
			if b != nil {
				if first, _ := b.Cursor().First(); first != nil {
					out = append(out, identity)
					break
				}
			}
		}
	}
	return out, nil
}

// Items are stored as length-prefixed fields (uvarint length, bytes), the
// last field unprefixed: a PDU as room ID then PDU, an EDU as type, key
// then content. The JSON is kept byte for byte as it was queued.
func encodeFQ(fields ...[]byte) []byte {
	n := 0
	for _, f := range fields {
		n += len(f) + binary.MaxVarintLen64
	}
	out := make([]byte, 0, n)
	for i, f := range fields {
		if i < len(fields)-1 {
			out = binary.AppendUvarint(out, uint64(len(f)))
		}
		out = append(out, f...)
	}
	return out
}

func decodeFQ(v []byte, n int) ([][]byte, bool) {
	out := make([][]byte, 0, n)
	for i := 0; i < n-1; i++ {
		l, w := binary.Uvarint(v)
		if w <= 0 || l > uint64(len(v)-w) {
			return nil, false
		}
		out = append(out, v[w:w+int(l)])
		v = v[w+int(l):]
	}
	return append(out, v), true
}

func decodeFQPDU(identity string, k, v []byte) (FedQueuePDU, error) {
	var p FedQueuePDU
	seq, err := ParseU64Key(k)
	if err != nil {
		return p, fmt.Errorf("storage: fed queue %s: %w", identity, err)
	}
	f, ok := decodeFQ(v, 2)
	if !ok {
		return p, fmt.Errorf("storage: fed queue %s: PDU %d: malformed record", identity, seq)
	}
	return FedQueuePDU{Seq: seq, RoomID: string(f[0]), PDU: bytes.Clone(f[1])}, nil
}

func decodeFQEDU(identity string, k, v []byte) (FedQueueEDU, error) {
	var e FedQueueEDU
	seq, err := ParseU64Key(k)
	if err != nil {
		return e, fmt.Errorf("storage: fed queue %s: %w", identity, err)
	}
	f, ok := decodeFQ(v, 3)
	if !ok {
		return e, fmt.Errorf("storage: fed queue %s: EDU %d: malformed record", identity, seq)
	}
	return FedQueueEDU{Seq: seq, Type: string(f[0]), Key: string(f[1]), Content: bytes.Clone(f[2])}, nil
}
