package storage

import (
	"bytes"
	"encoding/json"
	"fmt"

	"go.etcd.io/bbolt"
)

// The user directory's store, under the directory actor's identity:
//
//	udprofiles  user ID → UserDirProfile (as the user's last join showed it)
//	udrooms     room ID → UserDirRoom
//	udmembers   room ID 0x00 user ID → 1 (users joined to the room)
const (
	userDirProfilesStore = "udprofiles"
	userDirRoomsStore    = "udrooms"
	userDirMembersStore  = "udmembers"
)

// UserDirProfile is what the directory shows and matches of a user.
type UserDirProfile struct {
	DisplayName string `json:"displayname,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
}

// UserDirRoom is what the directory knows of a room.
type UserDirRoom struct {
	Public bool `json:"public"`
}

// UserDirTx reads and writes the user directory inside a transaction.
type UserDirTx struct {
	tx       *bbolt.Tx
	identity string
}

// UserDir returns the user directory store of identity inside tx.
func UserDir(tx *bbolt.Tx, identity string) UserDirTx { return UserDirTx{tx: tx, identity: identity} }

func (u UserDirTx) bucket(store string, create bool) (*bbolt.Bucket, error) {
	b, err := Namespace(u.tx, create, u.identity, store)
	if err != nil {
		return nil, fmt.Errorf("storage: user directory %s: %w", u.identity, err)
	}
	return b, nil
}

func checkUserDirKey(k []byte) error {
	if len(k) == 0 || len(k) > bbolt.MaxKeySize {
		return fmt.Errorf("storage: user directory key of %d bytes: %w", len(k), ErrBadKey)
	}
	return nil
}

// PutProfile stores a user's profile; nil removes it.
func (u UserDirTx) PutProfile(user string, p *UserDirProfile) error {
	if err := checkUserDirKey([]byte(user)); err != nil {
		return err
	}
	b, err := u.bucket(userDirProfilesStore, true)
	if err != nil {
		return err
	}
	if p == nil {
		return b.Delete([]byte(user))
	}
	v, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return b.Put([]byte(user), v)
}

// PutRoom stores what the directory knows of a room; nil removes it.
func (u UserDirTx) PutRoom(room string, r *UserDirRoom) error {
	if err := checkUserDirKey([]byte(room)); err != nil {
		return err
	}
	b, err := u.bucket(userDirRoomsStore, true)
	if err != nil {
		return err
	}
	if r == nil {
		return b.Delete([]byte(room))
	}
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return b.Put([]byte(room), v)
}

func userDirMemberKey(room, user string) []byte {
	k := make([]byte, 0, len(room)+1+len(user))
	k = append(k, room...)
	k = append(k, 0)
	return append(k, user...)
}

// SetMember records whether user is joined to room.
func (u UserDirTx) SetMember(room, user string, joined bool) error {
	k := userDirMemberKey(room, user)
	if err := checkUserDirKey(k); err != nil {
		return err
	}
	b, err := u.bucket(userDirMembersStore, true)
	if err != nil {
		return err
	}
	if !joined {
		return b.Delete(k)
	}
	return b.Put(k, []byte{1})
}

// Load calls the functions for every stored profile, room and membership.
func (u UserDirTx) Load(profile func(user string, p UserDirProfile), room func(id string, r UserDirRoom), member func(room, user string)) error {
	if b, err := u.bucket(userDirProfilesStore, false); err != nil {
		return err
	} else if b != nil {
		if err := b.ForEach(func(k, v []byte) error {
			var p UserDirProfile
			if err := json.Unmarshal(v, &p); err != nil {
				return fmt.Errorf("storage: user directory: decode profile: %w", err)
			}
			profile(string(k), p)
			return nil
		}); err != nil {
			return err
		}
	}
	if b, err := u.bucket(userDirRoomsStore, false); err != nil {
		return err
	} else if b != nil {
		if err := b.ForEach(func(k, v []byte) error {
			var r UserDirRoom
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("storage: user directory: decode room: %w", err)
			}
			room(string(k), r)
			return nil
		}); err != nil {
			return err
		}
	}
	b, err := u.bucket(userDirMembersStore, false)
	if err != nil || b == nil {
		return err
	}
	return b.ForEach(func(k, _ []byte) error {
		rm, us, ok := bytes.Cut(k, []byte{0})
		if !ok {
			return fmt.Errorf("storage: user directory: malformed member key: %w", ErrBadKey)
		}
		member(string(rm), string(us))
		return nil
	})
}
