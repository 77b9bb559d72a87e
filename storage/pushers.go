package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
)

// A user's pushers and recent notifications (client-server API, "Push
// Notifications"). Pushers are one small bounded list; notifications are
// keyed by a growing sequence number so that adding one and dropping the
// oldest touches two keys, however large the events are.

const notifStore = "notifs"

var pushersKey = []byte("pushers")

// Pushers returns the user's pushers as last written (the user actor's
// shape), or nil.
func (u UserTx) Pushers() (json.RawMessage, error) {
	b, err := u.bucket(accountStore, false)
	if err != nil || b == nil {
		return nil, err
	}
	return bytes.Clone(b.Get(pushersKey)), nil
}

// PutPushers writes the user's pushers.
func (u UserTx) PutPushers(raw json.RawMessage) error {
	b, err := u.bucket(accountStore, true)
	if err != nil {
		return err
	}
	if err := b.Put(pushersKey, raw); err != nil {
		return fmt.Errorf("storage: user %s: put pushers: %w", u.identity, err)
	}
	return nil
}

// Notification is one stored notification: its sequence number and the
// user actor's JSON.
type Notification struct {
	Seq  uint64
	JSON json.RawMessage
}

func seqKey(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

// PutNotification stores a notification at seq and drops the oldest ones
// beyond keep.
func (u UserTx) PutNotification(seq uint64, raw json.RawMessage, keep int) error {
	b, err := u.bucket(notifStore, true)
	if err != nil {
		return err
	}
	if err := b.Put(seqKey(seq), raw); err != nil {
		return fmt.Errorf("storage: user %s: put notification: %w", u.identity, err)
	}
	// Sequence numbers grow by one, so the kept ones are the last keep.
	for {
		k, _ := b.Cursor().First()
		if k == nil || binary.BigEndian.Uint64(k)+uint64(keep) > seq {
			break
		}
		if err := b.Delete(k); err != nil {
			return fmt.Errorf("storage: user %s: drop notification: %w", u.identity, err)
		}
	}
	return nil
}

// Notifications returns up to limit notifications with a sequence number
// below before (0: from the newest), newest first.
func (u UserTx) Notifications(before uint64, limit int) ([]Notification, error) {
	b, err := u.bucket(notifStore, false)
	if err != nil || b == nil {
		return nil, err
	}
	var out []Notification
	c := b.Cursor()
	var k, v []byte
	if before == 0 {
		k, v = c.Last()
	} else {
		k, v = c.Seek(seqKey(before))
		if k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
	}
	for ; k != nil && len(out) < limit; k, v = c.Prev() {
		out = append(out, Notification{Seq: binary.BigEndian.Uint64(k), JSON: bytes.Clone(v)})
	}
	return out, nil
}

// LastNotificationSeq is the newest notification's sequence number (0:
// none).
func (u UserTx) LastNotificationSeq() (uint64, error) {
	b, err := u.bucket(notifStore, false)
	if err != nil || b == nil {
		return 0, err
	}
	k, _ := b.Cursor().Last()
	if k == nil {
		return 0, nil
	}
	return binary.BigEndian.Uint64(k), nil
}
