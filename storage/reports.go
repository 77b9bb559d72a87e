package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
)

// Reports a user made about rooms, events and users (client-server API,
// "Reporting content"), kept in the reporter's own space for server admins,
// keyed by a growing sequence number so that adding one and dropping the
// oldest touches two keys.

const reportStore = "reports"

// PutReport stores a report as the newest and drops the oldest beyond
// keep; it returns the report's sequence number.
func (u UserTx) PutReport(raw json.RawMessage, keep int) (uint64, error) {
	b, err := u.bucket(reportStore, true)
	if err != nil {
		return 0, err
	}
	var seq uint64 = 1
	if k, _ := b.Cursor().Last(); k != nil {
		seq = binary.BigEndian.Uint64(k) + 1
	}
	if err := b.Put(binary.BigEndian.AppendUint64(nil, seq), raw); err != nil {
		return 0, fmt.Errorf("storage: user %s: put report: %w", u.identity, err)
	}
	for {
		k, _ := b.Cursor().First()
		if k == nil || binary.BigEndian.Uint64(k)+uint64(keep) > seq {
			break
		}
		if err := b.Delete(k); err != nil {
			return 0, fmt.Errorf("storage: user %s: drop report: %w", u.identity, err)
		}
	}
	return seq, nil
}

// Reports returns up to limit of the user's reports, newest first.
func (u UserTx) Reports(limit int) ([]json.RawMessage, error) {
	b, err := u.bucket(reportStore, false)
	if err != nil || b == nil {
		return nil, err
	}
	var out []json.RawMessage
	c := b.Cursor()
	for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
		out = append(out, bytes.Clone(v))
	}
	return out, nil
}
