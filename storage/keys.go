package storage

import (
	"encoding/binary"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"
)

// ErrBadKey reports a key or bucket name that does not have the required shape.
var ErrBadKey = errors.New("storage: bad key")

// reservedPrefix starts the names of the top-level buckets that belong to the
// engine itself (partition metadata). Identities never start with it.
const reservedPrefix = 0x00

// U64Key returns v as an 8-byte big-endian key, so that bbolt's byte order of
// keys is the numeric order of the values (stream positions, sequence numbers).
func U64Key(v uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), v)
}

// AppendU64Key appends the 8-byte big-endian form of v to dst, for composite
// keys such as a prefix followed by a position.
func AppendU64Key(dst []byte, v uint64) []byte {
	return binary.BigEndian.AppendUint64(dst, v)
}

// ParseU64Key is the inverse of U64Key. It refuses anything but exactly 8 bytes.
func ParseU64Key(k []byte) (uint64, error) {
	if len(k) != 8 {
		return 0, fmt.Errorf("storage: u64 key of %d bytes, want 8: %w", len(k), ErrBadKey)
	}
	return binary.BigEndian.Uint64(k), nil
}

// Bucket returns the bucket at path, nested one level per element: path[0] is
// a top-level bucket, path[1] a bucket inside it, and so on.
//
// With create set, missing buckets are created (tx must be writable). Without
// it, Bucket returns nil and no error when any bucket on the path is absent,
// so readers can treat "never written" as empty. An element that exists as a
// plain key rather than a bucket is absent for a reader and an error for a
// writer.
//
// The bucket, and every key and value read from it, is valid only for the life
// of tx: copy what must outlive it.
func Bucket(tx *bbolt.Tx, create bool, path ...[]byte) (*bbolt.Bucket, error) {
	if len(path) == 0 {
		return nil, fmt.Errorf("storage: bucket: empty path: %w", ErrBadKey)
	}
	if create && !tx.Writable() {
		return nil, fmt.Errorf("storage: bucket %q: create in a read-only transaction", path)
	}
	var b *bbolt.Bucket
	for i, name := range path {
		if len(name) == 0 {
			return nil, fmt.Errorf("storage: bucket %q: element %d is empty: %w", path, i, ErrBadKey)
		}
		switch {
		case create && i == 0:
			nb, err := tx.CreateBucketIfNotExists(name)
			if err != nil {
				return nil, fmt.Errorf("storage: bucket %q: create %q: %w", path, name, err)
			}
			b = nb
		case create:
			nb, err := b.CreateBucketIfNotExists(name)
			if err != nil {
				return nil, fmt.Errorf("storage: bucket %q: create %q: %w", path, name, err)
			}
			b = nb
		case i == 0:
			b = tx.Bucket(name)
		default:
			b = b.Bucket(name)
		}
		if b == nil {
			return nil, nil
		}
	}
	return b, nil
}

// Namespace returns the bucket where the typed store named store keeps the
// data of one actor identity: the sub-bucket store of the top-level bucket
// identity. For example the event store of a room lives at
// Namespace(tx, create, "room/!abc:example.org", "events").
//
// One top-level bucket per identity means an actor's data is found, copied or
// deleted (DeleteIdentity) as a unit, and typed stores never collide with one
// another. Create and absence behave as in Bucket.
func Namespace(tx *bbolt.Tx, create bool, identity, store string) (*bbolt.Bucket, error) {
	if err := checkIdentity(identity); err != nil {
		return nil, err
	}
	if store == "" {
		return nil, fmt.Errorf("storage: namespace of %q: empty store name: %w", identity, ErrBadKey)
	}
	return Bucket(tx, create, []byte(identity), []byte(store))
}

// DeleteIdentity removes everything stored for identity in the partition of tx.
// Deleting an identity that has nothing stored is not an error.
func DeleteIdentity(tx *bbolt.Tx, identity string) error {
	if err := checkIdentity(identity); err != nil {
		return err
	}
	if tx.Bucket([]byte(identity)) == nil {
		return nil
	}
	if err := tx.DeleteBucket([]byte(identity)); err != nil {
		return fmt.Errorf("storage: delete identity %q: %w", identity, err)
	}
	return nil
}

func checkIdentity(identity string) error {
	switch {
	case identity == "":
		return fmt.Errorf("storage: empty identity: %w", ErrBadKey)
	case len(identity) > bbolt.MaxKeySize:
		return fmt.Errorf("storage: identity of %d bytes exceeds %d: %w", len(identity), bbolt.MaxKeySize, ErrBadKey)
	case identity[0] == reservedPrefix:
		return fmt.Errorf("storage: identity %q starts with a reserved byte: %w", identity, ErrBadKey)
	}
	return nil
}
