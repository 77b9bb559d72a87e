package actors

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/text/unicode/norm"
)

// Passwords are hashed with bcrypt by the gateway (so the CPU cost is not
// paid inside an actor) and checked by the user actor, which holds the hash.
const (
	// DefaultPasswordCost is the bcrypt cost of new password hashes.
	DefaultPasswordCost = bcrypt.DefaultCost
	// MaxPasswordBytes bounds a password before hashing.
	MaxPasswordBytes = 512
)

// dummyHash is compared against when an account has no password hash, so
// that "no such user" costs as long as "wrong password" and does not show.
const dummyHash = "$2a$10$cRoqJlqi6cn.6Z.zUq/XPe5GMvGCtZDcS0E4UuSOmb7ZEnpELWlOS"

// passwordBytes is what bcrypt sees of a password: NFKC-normalised (so that
// the same password typed on different keyboards matches) and, beyond
// bcrypt's 72-byte input limit, replaced by its SHA-256 so that every byte
// counts.
func passwordBytes(password string) []byte {
	b := []byte(norm.NFKC.String(password))
	if len(b) > 72 {
		h := sha256.Sum256(b)
		b = []byte(base64.StdEncoding.EncodeToString(h[:]))
	}
	return b
}

// HashPassword hashes a new password with bcrypt at cost (DefaultPasswordCost
// when 0; tests may lower it to keep registration fast).
func HashPassword(password string, cost int) ([]byte, error) {
	if len(password) > MaxPasswordBytes {
		return nil, ErrInvalidParam("password is longer than %d bytes", MaxPasswordBytes)
	}
	if cost == 0 {
		cost = DefaultPasswordCost
	}
	h, err := bcrypt.GenerateFromPassword(passwordBytes(password), cost)
	if err != nil {
		return nil, fmt.Errorf("actors: hash password: %w", err)
	}
	return h, nil
}

// checkPassword reports whether password matches hash, in time that does
// not depend on where they differ; an empty hash never matches but costs
// the same as a real comparison.
func checkPassword(hash []byte, password string) bool {
	if len(hash) == 0 || len(password) > MaxPasswordBytes {
		_ = bcrypt.CompareHashAndPassword([]byte(dummyHash), passwordBytes(password))
		return false
	}
	err := bcrypt.CompareHashAndPassword(hash, passwordBytes(password))
	if err != nil && !errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
		return false
	}
	return err == nil
}
