package storage

import (
	"bytes"
	"fmt"

	"go.etcd.io/bbolt"
)

// The end-to-end encryption stores. A device actor keeps, under its
// identity:
//
//	e2ee    "meta" → the device's key counters (JSON the actor defines),
//	        "keys" → its signed device keys
//	otk     algorithm 0x00 upload seq (u64) key ID → one-time key JSON: a
//	        prefix seek finds an algorithm's oldest key (MSC4225)
//	otkid   algorithm ":" key ID → the key's otk key, for duplicates
//	inbox   position (u64) → to-device message JSON
//	tdseen  message ID → position (u64), tdseenq position → message ID:
//	        the recent messages, so a retried send is delivered once
//
// and a user actor keeps, under its identity:
//
//	xsign     "master", "self_signing", "user_signing" → cross-signing key
//	devlists  sequence (u64) → user ID whose device list changed
//	backup    version (u64) → backup version JSON, "meta" → counters
//	roomkeys  version (u64) room ID 0x00 session ID → key data JSON
const (
	E2EEMetaStore  = "e2ee"
	OTKStore       = "otk"
	OTKIDStore     = "otkid"
	InboxStore     = "inbox"
	SeenStore      = "tdseen"
	SeenQueueStore = "tdseenq"
	CrossSignStore = "xsign"
	DevListStore   = "devlists"
	BackupStore    = "backup"
	RoomKeysStore  = "roomkeys"
)

// E2EETx reads and writes one actor's encryption stores in a transaction.
// Values returned are copies: they outlive the transaction.
type E2EETx struct {
	tx       *bbolt.Tx
	identity string
}

// E2EE returns the encryption stores of identity inside tx.
func E2EE(tx *bbolt.Tx, identity string) E2EETx { return E2EETx{tx: tx, identity: identity} }

func (e E2EETx) bucket(store string, create bool) (*bbolt.Bucket, error) {
	b, err := Namespace(e.tx, create, e.identity, store)
	if err != nil {
		return nil, fmt.Errorf("storage: e2ee %s: %w", e.identity, err)
	}
	return b, nil
}

// Get reads one value; nil when absent.
func (e E2EETx) Get(store string, key []byte) ([]byte, error) {
	b, err := e.bucket(store, false)
	if err != nil || b == nil {
		return nil, err
	}
	return bytes.Clone(b.Get(key)), nil
}

// Put writes one value.
func (e E2EETx) Put(store string, key, value []byte) error {
	b, err := e.bucket(store, true)
	if err != nil {
		return err
	}
	if err := b.Put(key, value); err != nil {
		return fmt.Errorf("storage: e2ee %s: put %s: %w", e.identity, store, err)
	}
	return nil
}

// Delete removes one key; deleting what is absent is not an error.
func (e E2EETx) Delete(store string, key []byte) error {
	b, err := e.bucket(store, false)
	if err != nil || b == nil {
		return err
	}
	if err := b.Delete(key); err != nil {
		return fmt.Errorf("storage: e2ee %s: delete %s: %w", e.identity, store, err)
	}
	return nil
}

// Scan calls fn for the keys starting with prefix, in key order, from the
// first key after `after` (nil: from the start) until fn returns false or
// limit keys were seen (limit <= 0: no limit).
func (e E2EETx) Scan(store string, prefix, after []byte, limit int, fn func(k, v []byte) bool) error {
	b, err := e.bucket(store, false)
	if err != nil || b == nil {
		return err
	}
	c := b.Cursor()
	var k, v []byte
	if after != nil {
		k, v = c.Seek(after)
		if k != nil && bytes.Equal(k, after) {
			k, v = c.Next()
		}
	} else if len(prefix) > 0 {
		k, v = c.Seek(prefix)
	} else {
		k, v = c.First()
	}
	for n := 0; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if !fn(bytes.Clone(k), bytes.Clone(v)) {
			return nil
		}
		if n++; limit > 0 && n >= limit {
			return nil
		}
	}
	return nil
}

// DeleteRange removes the keys starting with prefix, up to and including
// `through` (nil: all of them), and answers how many it removed.
func (e E2EETx) DeleteRange(store string, prefix, through []byte) (int, error) {
	b, err := e.bucket(store, false)
	if err != nil || b == nil {
		return 0, err
	}
	c := b.Cursor()
	n := 0
	first := func() []byte {
		if len(prefix) == 0 {
			k, _ := c.First()
			return k
		}
		k, _ := c.Seek(prefix)
		return k
	}
	for k := first(); k != nil && bytes.HasPrefix(k, prefix); k = first() {
		if through != nil && bytes.Compare(k, through) > 0 {
			break
		}
		if err := c.Delete(); err != nil {
			return n, fmt.Errorf("storage: e2ee %s: delete %s: %w", e.identity, store, err)
		}
		n++
	}
	return n, nil
}

// E2EE returns the encryption stores of the user, in the same transaction.
func (u UserTx) E2EE() E2EETx { return E2EETx{tx: u.tx, identity: u.identity} }
