package storage

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestUserPushRulesRecord(t *testing.T) {
	p := openTest(t, Options{})
	read := func() json.RawMessage {
		t.Helper()
		var raw json.RawMessage
		userView(t, p, func(u UserTx) error {
			var err error
			raw, err = u.PushRules()
			return err
		})
		return raw
	}
	if raw := read(); raw != nil {
		t.Fatalf("push rules of a new user = %s", raw)
	}
	userUpdate(t, p, func(u UserTx) error { return u.PutPushRules(json.RawMessage(`{"rules":{}}`)) })
	if raw := read(); string(raw) != `{"rules":{}}` {
		t.Fatalf("push rules = %s", raw)
	}
	// They are not account data: a sync's scan does not see them.
	userView(t, p, func(u UserTx) error {
		ch, err := u.AccountDataSince(0, 0)
		if err == nil && len(ch) != 0 {
			err = errors.New("push rules listed as account data")
		}
		return err
	})
	userUpdate(t, p, func(u UserTx) error {
		if err := u.PutPushRules(json.RawMessage(`{`)); err == nil {
			return errors.New("invalid JSON stored")
		}
		return u.DeletePushRules()
	})
	if raw := read(); raw != nil {
		t.Fatalf("push rules after delete = %s", raw)
	}
}
