package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"

	"go.etcd.io/bbolt"
)

// The certificate store.
//
// A certs actor ("certs/acme") keeps what certmagic stores for the whole
// cluster: files under slash-separated keys ("certificates/ca/example.org/
// example.org.crt") in the sub-bucket "files", each value the 8-byte
// big-endian modification time in Unix milliseconds followed by the file's
// bytes; and named locks in the sub-bucket "locks", name → CertLock JSON.
// Directories are implicit: a key is a directory when files lie below it.
const (
	certFilesStore = "files"
	certLocksStore = "locks"
)

// MaxCertKey bounds the keys of the certificate store.
const MaxCertKey = 1024

// CertFile is one file of the certificate store.
type CertFile struct {
	Value      []byte
	ModifiedMs int64
}

// CertLock is who holds a named lock of the certificate store and until when.
type CertLock struct {
	Owner     string `json:"owner"`
	ExpiresMs int64  `json:"expires_ms"`
}

func checkCertKey(key string) error {
	if key == "" || len(key) > MaxCertKey || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") {
		return fmt.Errorf("storage: certificate store key %q: %w", key, ErrBadKey)
	}
	return nil
}

// CertFileOf reads the file at key, or ok=false when there is none.
func CertFileOf(tx *bbolt.Tx, identity, key string) (f CertFile, ok bool, err error) {
	if err := checkCertKey(key); err != nil {
		return f, false, err
	}
	b, err := Namespace(tx, false, identity, certFilesStore)
	if err != nil || b == nil {
		return f, false, err
	}
	v := b.Get([]byte(key))
	if v == nil {
		return f, false, nil
	}
	if len(v) < 8 {
		return f, false, fmt.Errorf("storage: certificate store %s: file %q of %d bytes", identity, key, len(v))
	}
	return CertFile{ModifiedMs: int64(binary.BigEndian.Uint64(v)), Value: bytes.Clone(v[8:])}, true, nil
}

// PutCertFile writes the file at key.
func PutCertFile(tx *bbolt.Tx, identity, key string, f CertFile) error {
	if err := checkCertKey(key); err != nil {
		return err
	}
	b, err := Namespace(tx, true, identity, certFilesStore)
	if err != nil {
		return fmt.Errorf("storage: certificate store %s: %w", identity, err)
	}
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(f.Value)), uint64(f.ModifiedMs))
	return b.Put([]byte(key), append(v, f.Value...))
}

// DeleteCertFiles removes the file at key and every file below key.
func DeleteCertFiles(tx *bbolt.Tx, identity, key string) error {
	if err := checkCertKey(key); err != nil {
		return err
	}
	b, err := Namespace(tx, false, identity, certFilesStore)
	if err != nil || b == nil {
		return err
	}
	if err := b.Delete([]byte(key)); err != nil {
		return fmt.Errorf("storage: certificate store %s: delete %q: %w", identity, key, err)
	}
	prefix := []byte(key + "/")
	var below [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		below = append(below, bytes.Clone(k))
	}
	for _, k := range below {
		if err := b.Delete(k); err != nil {
			return fmt.Errorf("storage: certificate store %s: delete %q: %w", identity, k, err)
		}
	}
	return nil
}

// CertFilesUnder calls fn for every file strictly below dir ("" is the
// root), in key order.
func CertFilesUnder(tx *bbolt.Tx, identity, dir string, fn func(key string, f CertFile) error) error {
	if dir != "" {
		if err := checkCertKey(dir); err != nil {
			return err
		}
	}
	b, err := Namespace(tx, false, identity, certFilesStore)
	if err != nil || b == nil {
		return err
	}
	var prefix []byte
	if dir != "" {
		prefix = []byte(dir + "/")
	}
	c := b.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if len(v) < 8 {
			return fmt.Errorf("storage: certificate store %s: file %q of %d bytes", identity, k, len(v))
		}
		if err := fn(string(k), CertFile{ModifiedMs: int64(binary.BigEndian.Uint64(v)), Value: v[8:]}); err != nil {
			return err
		}
	}
	return nil
}

// CertLocks returns every lock record of the certificate store identity.
func CertLocks(tx *bbolt.Tx, identity string) (map[string]CertLock, error) {
	out := map[string]CertLock{}
	b, err := Namespace(tx, false, identity, certLocksStore)
	if err != nil || b == nil {
		return out, err
	}
	err = b.ForEach(func(k, v []byte) error {
		var l CertLock
		if err := json.Unmarshal(v, &l); err != nil {
			return fmt.Errorf("storage: certificate store %s: lock %q: %w", identity, k, err)
		}
		out[string(k)] = l
		return nil
	})
	return out, err
}

// PutCertLock records who holds lock name.
func PutCertLock(tx *bbolt.Tx, identity, name string, l CertLock) error {
	if err := checkCertKey(name); err != nil {
		return err
	}
	b, err := Namespace(tx, true, identity, certLocksStore)
	if err != nil {
		return fmt.Errorf("storage: certificate store %s: %w", identity, err)
	}
	v, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("storage: certificate store %s: encode lock: %w", identity, err)
	}
	return b.Put([]byte(name), v)
}

// DeleteCertLock removes the record of lock name.
func DeleteCertLock(tx *bbolt.Tx, identity, name string) error {
	b, err := Namespace(tx, false, identity, certLocksStore)
	if err != nil || b == nil {
		return err
	}
	return b.Delete([]byte(name))
}
