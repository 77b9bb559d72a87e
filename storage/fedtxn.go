package storage

import (
	"encoding/json"
	"fmt"
	"slices"

	"go.etcd.io/bbolt"
)

// What the inbound actor of one remote server (identity fedtxn/<origin>)
// keeps: the responses to the transactions the origin sent, so that a
// retried transaction is answered without being processed again, and the
// rooms each of the origin's users was seen joined to, where that user's
// presence goes.
//
// Transactions sit in two stores: a small index (txn ID → sequence and
// time), read whole when the actor starts, and the response bodies, read
// only when a transaction is repeated.

const (
	fedTxnIndexStore = "fedtxn"
	fedTxnRespStore  = "fedtxnresp"
	fedPresRoomStore = "fedpresrooms"
)

// FedTxn is the index entry of one processed transaction.
type FedTxn struct {
	Seq uint64 `json:"seq"`
	TS  int64  `json:"ts"` // when it was processed (ms)
}

// LoadFedTxns calls fn with every transaction stored for identity.
func LoadFedTxns(tx *bbolt.Tx, identity string, fn func(txnID string, t FedTxn)) error {
	b, err := Namespace(tx, false, identity, fedTxnIndexStore)
	if err != nil || b == nil {
		return err
	}
	return b.ForEach(func(k, v []byte) error {
		var t FedTxn
		if err := json.Unmarshal(v, &t); err != nil {
			return fmt.Errorf("storage: transaction %q of %s: decode: %w", k, identity, err)
		}
		fn(string(k), t)
		return nil
	})
}

// FedTxnResponse returns the stored response of transaction txnID (nil when
// there is none). The bytes are a copy, safe to keep.
func FedTxnResponse(tx *bbolt.Tx, identity, txnID string) ([]byte, error) {
	b, err := Namespace(tx, false, identity, fedTxnRespStore)
	if err != nil || b == nil {
		return nil, err
	}
	return slices.Clone(b.Get([]byte(txnID))), nil
}

// PutFedTxn stores transaction txnID's index entry and response.
func PutFedTxn(tx *bbolt.Tx, identity, txnID string, t FedTxn, response []byte) error {
	if txnID == "" || len(txnID) > bbolt.MaxKeySize {
		return fmt.Errorf("storage: transaction ID of %d bytes: %w", len(txnID), ErrBadKey)
	}
	idx, err := Namespace(tx, true, identity, fedTxnIndexStore)
	if err != nil {
		return fmt.Errorf("storage: transactions of %s: %w", identity, err)
	}
	resp, err := Namespace(tx, true, identity, fedTxnRespStore)
	if err != nil {
		return fmt.Errorf("storage: transactions of %s: %w", identity, err)
	}
	v, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("storage: transaction %q of %s: encode: %w", txnID, identity, err)
	}
	if err := idx.Put([]byte(txnID), v); err != nil {
		return err
	}
	return resp.Put([]byte(txnID), response)
}

// DeleteFedTxn forgets transaction txnID.
func DeleteFedTxn(tx *bbolt.Tx, identity, txnID string) error {
	for _, store := range []string{fedTxnIndexStore, fedTxnRespStore} {
		b, err := Namespace(tx, false, identity, store)
		if err != nil {
			return fmt.Errorf("storage: transactions of %s: %w", identity, err)
		}
		if b == nil {
			continue
		}
		if err := b.Delete([]byte(txnID)); err != nil {
			return err
		}
	}
	return nil
}

// LoadFedPresenceRooms calls fn with each user's rooms stored for identity.
func LoadFedPresenceRooms(tx *bbolt.Tx, identity string, fn func(userID string, rooms []string)) error {
	b, err := Namespace(tx, false, identity, fedPresRoomStore)
	if err != nil || b == nil {
		return err
	}
	return b.ForEach(func(k, v []byte) error {
		var rooms []string
		if err := json.Unmarshal(v, &rooms); err != nil {
			return fmt.Errorf("storage: presence rooms of %q in %s: decode: %w", k, identity, err)
		}
		fn(string(k), rooms)
		return nil
	})
}

// PutFedPresenceRooms stores userID's rooms (none: forgets the user).
func PutFedPresenceRooms(tx *bbolt.Tx, identity, userID string, rooms []string) error {
	if userID == "" || len(userID) > bbolt.MaxKeySize {
		return fmt.Errorf("storage: user ID of %d bytes: %w", len(userID), ErrBadKey)
	}
	b, err := Namespace(tx, true, identity, fedPresRoomStore)
	if err != nil {
		return fmt.Errorf("storage: presence rooms of %s: %w", identity, err)
	}
	if len(rooms) == 0 {
		return b.Delete([]byte(userID))
	}
	v, err := json.Marshal(rooms)
	if err != nil {
		return fmt.Errorf("storage: presence rooms of %q in %s: encode: %w", userID, identity, err)
	}
	return b.Put([]byte(userID), v)
}
