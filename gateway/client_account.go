package gateway

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

// Accounts: registration (with user-interactive auth), login and logout,
// whoami, password change, deactivation, device management and Synapse's
// shared-secret registration.
//
// The gateway orchestrates what spans several actors (a login adds the
// device to the user's index, then gives the device actor its token; a
// deactivation marks the account, then logs out its devices and leaves its
// rooms), so that no actor waits on another.
const (
	// maxDeviceIDBytes bounds a client-chosen device ID.
	maxDeviceIDBytes = 255
	// maxDeviceNameBytes bounds a device's display name.
	maxDeviceNameBytes = 100
	// deviceFanout bounds concurrent requests to one user's device actors.
	deviceFanout = 16
	// sharedSecretNonceLifetime is how long a shared-secret registration
	// nonce may be used (once).
	sharedSecretNonceLifetime = time.Minute
	// maxDeleteDevices bounds one /delete_devices request.
	maxDeleteDevices = actors.MaxDevices
)

// hashPassword hashes a new password with the configured bcrypt cost
// (zero: actors.DefaultPasswordCost).
func (s *Server) hashPassword(password string) ([]byte, error) {
	return actors.HashPassword(password, s.cfg.PasswordHashCost)
}

func (s *Server) registerAccount() {
	s.handle("POST /_matrix/client/v3/register", s.handleRegister)
	s.handle("GET /_matrix/client/v3/register/available", s.handleRegisterAvailable)
	s.handle("GET /_matrix/client/v1/register/m.login.registration_token/validity", s.handleRegistrationTokenValidity)
	s.handle("GET /_matrix/client/v3/login", s.handleLoginFlows)
	s.handle("POST /_matrix/client/v3/login", s.handleLogin)
	s.handle("POST /_matrix/client/v3/logout", s.authed(s.handleLogout))
	s.handle("POST /_matrix/client/v3/logout/all", s.authed(s.handleLogoutAll))
	s.handle("GET /_matrix/client/v3/account/whoami", s.authed(s.handleWhoami))
	s.handle("POST /_matrix/client/v3/account/password", s.authed(s.handleChangePassword))
	s.handle("POST /_matrix/client/v3/account/deactivate", s.authed(s.handleDeactivate))
	s.handle("GET /_matrix/client/v3/devices", s.authed(s.handleListDevices))
	s.handle("GET /_matrix/client/v3/devices/{deviceId}", s.authed(s.handleGetDevice))
	s.handle("PUT /_matrix/client/v3/devices/{deviceId}", s.authed(s.handleUpdateDevice))
	s.handle("DELETE /_matrix/client/v3/devices/{deviceId}", s.authed(s.handleDeleteDevice))
	s.handle("POST /_matrix/client/v3/delete_devices", s.authed(s.handleDeleteDevices))
	s.handle("GET /_synapse/admin/v1/register", s.handleSharedSecretNonce)
	s.handle("POST /_synapse/admin/v1/register", s.handleSharedSecretRegister)
}

// ---- helpers shared by the account and user data endpoints ----

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (s *Server) isLocalUser(userID string) bool {
	_, domain, ok := strings.Cut(userID, ":")
	return ok && domain == s.server.ServerName
}

func (s *Server) accountQuery(ctx context.Context, q *pb.AccountQuery) (*pb.AccountQueryReply, error) {
	res, err := s.router.Request(ctx, q)
	if err != nil {
		return nil, err
	}
	rep, ok := res.(*pb.AccountQueryReply)
	if !ok {
		return nil, errors.New("gateway: unexpected account query reply")
	}
	return rep, nil
}

func (s *Server) accountUpdate(ctx context.Context, u *pb.AccountUpdate) (*pb.AccountUpdateReply, error) {
	res, err := s.router.Request(ctx, u)
	if err != nil {
		return nil, err
	}
	rep, ok := res.(*pb.AccountUpdateReply)
	if !ok {
		return nil, errors.New("gateway: unexpected account update reply")
	}
	return rep, nil
}

func errMissingParam(msg string) error {
	return errStatus(http.StatusBadRequest, "M_MISSING_PARAM", msg)
}

func errInvalidUsername(msg string) error {
	return errStatus(http.StatusBadRequest, "M_INVALID_USERNAME", msg)
}

var errUserInUse = errStatus(http.StatusBadRequest, "M_USER_IN_USE", "desired user ID is already taken")

const upperLetters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

func randomFrom(alphabet string, n int) string {
	b := make([]byte, n)
	size := big.NewInt(int64(len(alphabet)))
	for i := range b {
		v, err := rand.Int(rand.Reader, size)
		if err != nil {
			panic("gateway: no randomness: " + err.Error())
		}
		b[i] = alphabet[v.Int64()]
	}
	return string(b)
}

func newDeviceID() string { return randomFrom(upperLetters, 10) }

// checkDeviceID validates a client-chosen device ID.
func checkDeviceID(id string) error {
	if len(id) > maxDeviceIDBytes || !utf8.ValidString(id) || strings.ContainsFunc(id, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return actors.ErrInvalidParam("device_id must be at most %d bytes of printable text", maxDeviceIDBytes)
	}
	return nil
}

func checkDeviceName(name string) error {
	if len(name) > maxDeviceNameBytes {
		return actors.ErrInvalidParam("device display name is longer than %d bytes", maxDeviceNameBytes)
	}
	return nil
}

// userForLocalpart maps a requested username onto a new local user ID the
// way Synapse does: lower-cased, then held to the strict localpart grammar;
// all-digit names are kept for guests and a leading '_' for application
// services.
func (s *Server) userForLocalpart(username string) (string, error) {
	lp := strings.ToLower(username)
	if err := eventgraph.ValidateLocalpartStrict(lp); err != nil {
		return "", errInvalidUsername("user ID may only contain a-z, 0-9, '.', '_', '=', '-', '/' and '+'")
	}
	if strings.Trim(lp, "0123456789") == "" {
		return "", errInvalidUsername("numeric user IDs are reserved for guest users")
	}
	if lp[0] == '_' {
		return "", errInvalidUsername("user ID may not begin with '_'")
	}
	userID := "@" + lp + ":" + s.server.ServerName
	if len(userID) > eventgraph.MaxIDBytes {
		return "", errInvalidUsername("user ID may not be longer than 255 bytes")
	}
	return userID, nil
}

// userExists asks the user actor whether an account (even deactivated)
// holds the ID.
func (s *Server) userExists(ctx context.Context, userID string) (bool, error) {
	rep, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: userID, Kind: "exists"})
	if err != nil {
		return false, err
	}
	return rep.Found, nil
}

// identifyUser resolves the user a login or a UIA password stage names:
// an m.id.user identifier (localpart or full ID) or the deprecated
// top-level "user". Third-party identifiers are never bound here, so they
// name no one.
func (s *Server) identifyUser(identifier json.RawMessage, legacyUser json.RawMessage) (string, error) {
	var name string
	switch {
	case len(identifier) > 0 && string(identifier) != "null":
		var ident struct {
			Type string `json:"type"`
			User string `json:"user"`
		}
		if err := json.Unmarshal(identifier, &ident); err != nil {
			return "", actors.ErrBadJSON("identifier must be an object with string fields")
		}
		switch ident.Type {
		case "m.id.user":
			name = ident.User
		case "m.id.thirdparty", "m.id.phone":
			return "", actors.ErrForbidden("no account is bound to this third-party identifier")
		default:
			return "", errStatus(http.StatusBadRequest, "M_UNKNOWN", "unknown login identifier type")
		}
	case len(legacyUser) > 0 && string(legacyUser) != "null":
		if err := json.Unmarshal(legacyUser, &name); err != nil {
			return "", actors.ErrBadJSON("user must be a string")
		}
	default:
		return "", errMissingParam("identifier is required")
	}
	if name == "" {
		return "", errMissingParam("identifier has no user")
	}
	var userID string
	if strings.HasPrefix(name, "@") {
		lp, domain, ok := strings.Cut(name[1:], ":")
		if !ok {
			return "", actors.ErrForbidden("invalid username or password")
		}
		userID = "@" + strings.ToLower(lp) + ":" + domain
	} else {
		userID = "@" + strings.ToLower(name) + ":" + s.server.ServerName
	}
	if eventgraph.ValidateUserID(userID) != nil || !s.isLocalUser(userID) {
		return "", actors.ErrForbidden("invalid username or password")
	}
	return userID, nil
}

// checkPassword asks the user actor whether password is the user's.
func (s *Server) checkPassword(ctx context.Context, userID, password string) error {
	_, err := s.router.Request(ctx, &pb.CheckPassword{UserId: userID, Password: password})
	return err
}

// login gives a device (new, or an existing one whose old token stops
// working) a fresh access token: the user's device index first, so that a
// token never exists for a device the user cannot list and delete.
func (s *Server) login(ctx context.Context, r *http.Request, userID, deviceID, displayName string) (token, devID string, err error) {
	if deviceID == "" {
		deviceID = newDeviceID()
	}
	added, err := s.accountUpdate(ctx, &pb.AccountUpdate{UserId: userID, Kind: "add_device", Key: deviceID})
	if err != nil {
		return "", "", err
	}
	// A suspended or locked account's new sessions behave the same.
	var flags struct{ Locked, Suspended bool }
	_ = json.Unmarshal(added.Json, &flags)
	token, hash := NewAccessToken(userID, deviceID)
	if _, err := s.router.Request(ctx, &pb.DeviceLogin{UserId: userID, DeviceId: deviceID, TokenHash: hash,
		DisplayName: displayName, Ip: clientIP(r), Locked: flags.Locked, Suspended: flags.Suspended}); err != nil {
		return "", "", err
	}
	return token, deviceID, nil
}

// logoutDevices deletes devices (and so their tokens), then drops them
// from the user's index in one write.
func (s *Server) logoutDevices(ctx context.Context, userID string, devices []string) error {
	if len(devices) == 0 {
		return nil
	}
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, deviceFanout)
	var wg sync.WaitGroup
	for _, d := range devices {
		wg.Add(1)
		sem <- struct{}{}
		go func(d string) {
			defer func() { <-sem; wg.Done() }()
			if _, err := s.router.Request(ctx, &pb.DeviceUpdate{UserId: userID, DeviceId: d, Kind: "logout"}); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}(d)
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	list, err := json.Marshal(devices)
	if err != nil {
		return err
	}
	if _, err = s.accountUpdate(ctx, &pb.AccountUpdate{UserId: userID, Kind: "remove_devices", Value: list}); err != nil {
		return err
	}
	// The devices' keys went with them: whoever shares a room must know.
	s.notifyDeviceListChange(ctx, userID)
	return nil
}

// userDevices lists the user's device IDs.
func (s *Server) userDevices(ctx context.Context, userID string) ([]string, error) {
	rep, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: userID, Kind: "devices"})
	if err != nil {
		return nil, err
	}
	var devices []string
	if err := json.Unmarshal(rep.Json, &devices); err != nil {
		return nil, err
	}
	return devices, nil
}

// passwordUIA is the user-interactive auth of account operations: the
// user's own password, once per session.
func (s *Server) passwordUIA(ctx context.Context, userID string) uiaRequest {
	return uiaRequest{
		flows: []uiaFlow{{Stages: []string{"m.login.password"}}},
		user:  userID,
		stage: func(_ *uiaSession, stage string, auth map[string]json.RawMessage) error {
			if stage != "m.login.password" {
				return errStatus(http.StatusBadRequest, "M_UNRECOGNIZED", "unknown authentication stage")
			}
			who := userID
			if len(auth["identifier"]) > 0 || len(auth["user"]) > 0 {
				var err error
				if who, err = s.identifyUser(auth["identifier"], auth["user"]); err != nil {
					return err
				}
			}
			if who != userID {
				return actors.ErrForbidden("the password given is not for the user making the request")
			}
			var password string
			if err := json.Unmarshal(auth["password"], &password); err != nil {
				return actors.ErrBadJSON("password must be a string")
			}
			return s.checkPassword(ctx, userID, password)
		},
	}
}

// ---- registration ----

type registerRequest struct {
	Auth                     map[string]json.RawMessage `json:"auth"`
	Username                 *string                    `json:"username"`
	Password                 *string                    `json:"password"`
	DeviceID                 *string                    `json:"device_id"`
	InitialDeviceDisplayName *string                    `json:"initial_device_display_name"`
	InhibitLogin             bool                       `json:"inhibit_login"`
	RefreshToken             bool                       `json:"refresh_token"`
}

type registerResponse struct {
	UserID      string `json:"user_id"`
	AccessToken string `json:"access_token,omitempty"`
	DeviceID    string `json:"device_id,omitempty"`
	HomeServer  string `json:"home_server"`
}

func (s *Server) registrationOpen() bool {
	return s.cfg.Registration == "open" || s.cfg.Registration == "token"
}

// registrationUIA is registration's flow: the policies to accept (MSC1692)
// if any, then a dummy stage (open registration) or a registration token.
func (s *Server) registrationUIA() uiaRequest {
	last := "m.login.dummy"
	if s.cfg.Registration == "token" {
		last = "m.login.registration_token"
	}
	var stages []string
	params := map[string]any{}
	if len(s.cfg.Terms) > 0 {
		stages = append(stages, "m.login.terms")
		policies := map[string]any{}
		for id, p := range s.cfg.Terms {
			doc := map[string]any{"version": p.Version}
			for lang, t := range p.Langs {
				doc[lang] = map[string]string{"name": t.Name, "url": t.URL}
			}
			policies[id] = doc
		}
		params["m.login.terms"] = map[string]any{"policies": policies}
	}
	stages = append(stages, last)
	return uiaRequest{
		flows:  []uiaFlow{{Stages: stages}},
		params: params,
		stage: func(sess *uiaSession, stage string, auth map[string]json.RawMessage) error {
			switch stage {
			case "m.login.dummy":
				return nil
			case "m.login.registration_token":
				var tok string
				_ = json.Unmarshal(auth["token"], &tok)
				if !s.validRegistrationToken(tok) {
					return actors.Errorf(http.StatusUnauthorized, "M_FORBIDDEN", "invalid registration token")
				}
				return nil
			case "m.login.terms":
				accepted := map[string]string{}
				for id, p := range s.cfg.Terms {
					accepted[id] = p.Version
				}
				sess.data["terms"] = accepted
				return nil
			}
			return errStatus(http.StatusBadRequest, "M_UNRECOGNIZED", "unknown authentication stage")
		},
	}
}

// validRegistrationToken compares tok with every configured token in
// constant time.
func (s *Server) validRegistrationToken(tok string) bool {
	if tok == "" {
		return false
	}
	found := 0
	for _, t := range s.cfg.RegistrationTokens {
		found |= subtle.ConstantTimeCompare([]byte(t), []byte(tok))
	}
	return found == 1
}

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) {
	kind := r.URL.Query().Get("kind")
	if kind == "" {
		kind = "user"
	}
	if kind != "user" && kind != "guest" {
		writeError(w, r, actors.ErrInvalidParam("kind must be user or guest"))
		return
	}
	var req registerRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if !s.registrationOpen() {
		writeError(w, r, actors.ErrForbidden("registration is disabled"))
		return
	}
	if kind == "guest" {
		// Guests skip user-interactive auth, so a server that wants a
		// registration token takes no guests.
		if s.cfg.Registration != "open" {
			writeError(w, r, actors.ErrForbidden("guest registration is disabled"))
			return
		}
		s.registerGuest(w, r, req)
		return
	}
	ctx := r.Context()
	// The checks the spec wants before user-interactive auth.
	userID := ""
	if req.Username != nil {
		var err error
		if userID, err = s.userForLocalpart(*req.Username); err != nil {
			writeError(w, r, err)
			return
		}
		taken, err := s.userExists(ctx, userID)
		if err != nil {
			writeError(w, r, err)
			return
		}
		if taken {
			writeError(w, r, errUserInUse)
			return
		}
	}
	if req.Password != nil && len(*req.Password) > actors.MaxPasswordBytes {
		writeError(w, r, actors.ErrInvalidParam("password is longer than %d bytes", actors.MaxPasswordBytes))
		return
	}
	if req.DeviceID != nil {
		if err := checkDeviceID(*req.DeviceID); err != nil {
			writeError(w, r, err)
			return
		}
	}
	if req.InitialDeviceDisplayName != nil {
		if err := checkDeviceName(*req.InitialDeviceDisplayName); err != nil {
			writeError(w, r, err)
			return
		}
	}
	sess, err := s.runUIA(req.Auth, s.registrationUIA())
	if err != nil {
		writeUIA(w, r, err)
		return
	}
	if req.Password == nil || *req.Password == "" {
		writeError(w, r, errMissingParam("password is required"))
		return
	}
	hash, err := s.hashPassword(*req.Password)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var terms []byte
	if t, ok := sess.data["terms"]; ok {
		terms, _ = json.Marshal(t)
	}
	userID, err = s.createAccount(ctx, userID, func() string { return "u" + randomFrom("abcdefghijklmnopqrstuvwxyz0123456789", 11) },
		&pb.Register{PasswordHash: hash, AcceptedTerms: terms})
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.uia.finish(sess.id)
	resp := registerResponse{UserID: userID, HomeServer: s.server.ServerName}
	if !req.InhibitLogin {
		var deviceID, name string
		if req.DeviceID != nil {
			deviceID = *req.DeviceID
		}
		if req.InitialDeviceDisplayName != nil {
			name = *req.InitialDeviceDisplayName
		}
		if resp.AccessToken, resp.DeviceID, err = s.login(ctx, r, userID, deviceID, name); err != nil {
			writeError(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// createAccount registers userID, or (userID "") a generated localpart,
// trying a few times when a generated one is taken. The display name starts
// as the localpart, as Synapse does.
func (s *Server) createAccount(ctx context.Context, userID string, generate func() string, reg *pb.Register) (string, error) {
	attempts := 1
	if userID == "" {
		attempts = 5
	}
	for i := 0; i < attempts; i++ {
		id := userID
		if id == "" {
			id = "@" + generate() + ":" + s.server.ServerName
		}
		lp := strings.TrimPrefix(id[:strings.IndexByte(id, ':')], "@")
		profile, _ := json.Marshal(map[string]string{"displayname": lp})
		msg := proto.Clone(reg).(*pb.Register)
		msg.UserId = id
		if len(msg.Profile) == 0 {
			msg.Profile = profile
		}
		_, err := s.router.Request(ctx, msg)
		var me *actors.MatrixError
		if errors.As(err, &me) && me.ErrCode == "M_USER_IN_USE" && userID == "" {
			continue
		}
		if err != nil {
			return "", err
		}
		return id, nil
	}
	return "", errUserInUse
}

// registerGuest makes a guest account: every parameter but the device's
// display name is ignored, and the guest is always logged in.
func (s *Server) registerGuest(w http.ResponseWriter, r *http.Request, req registerRequest) {
	var name string
	if req.InitialDeviceDisplayName != nil {
		name = *req.InitialDeviceDisplayName
		if len(name) > maxDeviceNameBytes {
			name = name[:maxDeviceNameBytes]
			for !utf8.ValidString(name) {
				name = name[:len(name)-1]
			}
		}
	}
	ctx := r.Context()
	userID, err := s.createAccount(ctx, "", func() string { return randomFrom("0123456789", 12) }, &pb.Register{Guest: true})
	if err != nil {
		writeError(w, r, err)
		return
	}
	resp := registerResponse{UserID: userID, HomeServer: s.server.ServerName}
	if resp.AccessToken, resp.DeviceID, err = s.login(ctx, r, userID, "", name); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleRegisterAvailable(w http.ResponseWriter, r *http.Request) {
	if !s.registrationOpen() {
		writeError(w, r, actors.ErrForbidden("registration is disabled"))
		return
	}
	q := r.URL.Query()
	if !q.Has("username") {
		writeError(w, r, errMissingParam("username is required"))
		return
	}
	userID, err := s.userForLocalpart(q.Get("username"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	taken, err := s.userExists(r.Context(), userID)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if taken {
		writeError(w, r, errUserInUse)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"available": true})
}

func (s *Server) handleRegistrationTokenValidity(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Registration != "token" {
		writeError(w, r, actors.ErrForbidden("registration is not token-based"))
		return
	}
	q := r.URL.Query()
	if !q.Has("token") {
		writeError(w, r, errMissingParam("token is required"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"valid": s.validRegistrationToken(q.Get("token"))})
}

// ---- login and logout ----

func (s *Server) handleLoginFlows(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"flows": []map[string]string{{"type": "m.login.password"}}})
}

type loginRequest struct {
	Type                     string          `json:"type"`
	Identifier               json.RawMessage `json:"identifier"`
	User                     json.RawMessage `json:"user"`
	Medium                   string          `json:"medium"`
	Address                  string          `json:"address"`
	Password                 *string         `json:"password"`
	DeviceID                 *string         `json:"device_id"`
	InitialDeviceDisplayName *string         `json:"initial_device_display_name"`
	RefreshToken             bool            `json:"refresh_token"`
}

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	var req loginRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if req.Type != "m.login.password" {
		writeError(w, r, errStatus(http.StatusBadRequest, "M_UNKNOWN", "unknown login type"))
		return
	}
	if len(req.Identifier) == 0 && len(req.User) == 0 && req.Medium != "" && req.Address != "" {
		writeError(w, r, actors.ErrForbidden("no account is bound to this third-party identifier"))
		return
	}
	userID, err := s.identifyUser(req.Identifier, req.User)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if req.Password == nil {
		writeError(w, r, errMissingParam("password is required"))
		return
	}
	var deviceID, name string
	if req.DeviceID != nil {
		if err := checkDeviceID(*req.DeviceID); err != nil {
			writeError(w, r, err)
			return
		}
		deviceID = *req.DeviceID
	}
	if req.InitialDeviceDisplayName != nil {
		if err := checkDeviceName(*req.InitialDeviceDisplayName); err != nil {
			writeError(w, r, err)
			return
		}
		name = *req.InitialDeviceDisplayName
	}
	ctx := r.Context()
	if err := s.checkPassword(ctx, userID, *req.Password); err != nil {
		writeError(w, r, err)
		return
	}
	token, deviceID, err := s.login(ctx, r, userID, deviceID, name)
	if err != nil {
		writeError(w, r, err)
		return
	}
	resp := map[string]any{"user_id": userID, "access_token": token, "device_id": deviceID, "home_server": s.server.ServerName}
	if s.cfg.PublicBaseURL != "" {
		resp["well_known"] = map[string]any{"m.homeserver": map[string]string{"base_url": s.cfg.PublicBaseURL}}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request, sess *Session) {
	if err := s.logoutDevices(r.Context(), sess.UserID, []string{sess.DeviceID}); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) handleLogoutAll(w http.ResponseWriter, r *http.Request, sess *Session) {
	ctx := r.Context()
	devices, err := s.userDevices(ctx, sess.UserID)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if !slices.Contains(devices, sess.DeviceID) {
		devices = append(devices, sess.DeviceID)
	}
	if err := s.logoutDevices(ctx, sess.UserID, devices); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) handleWhoami(w http.ResponseWriter, r *http.Request, sess *Session) {
	rep, err := s.accountQuery(r.Context(), &pb.AccountQuery{UserId: sess.UserID, Kind: "info"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	var info struct {
		Guest bool `json:"guest"`
	}
	if rep.Found {
		_ = json.Unmarshal(rep.Json, &info)
	}
	writeJSON(w, http.StatusOK, map[string]any{"user_id": sess.UserID, "device_id": sess.DeviceID, "is_guest": info.Guest})
}

// ---- account management ----

func (s *Server) handleChangePassword(w http.ResponseWriter, r *http.Request, sess *Session) {
	var req struct {
		NewPassword   *string                    `json:"new_password"`
		LogoutDevices *bool                      `json:"logout_devices"`
		Auth          map[string]json.RawMessage `json:"auth"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	ctx := r.Context()
	if req.NewPassword != nil && len(*req.NewPassword) > actors.MaxPasswordBytes {
		writeError(w, r, actors.ErrInvalidParam("password is longer than %d bytes", actors.MaxPasswordBytes))
		return
	}
	uia, err := s.runUIA(req.Auth, s.passwordUIA(ctx, sess.UserID))
	if err != nil {
		writeUIA(w, r, err)
		return
	}
	if req.NewPassword == nil || *req.NewPassword == "" {
		writeError(w, r, errMissingParam("new_password is required"))
		return
	}
	hash, err := s.hashPassword(*req.NewPassword)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if _, err := s.accountUpdate(ctx, &pb.AccountUpdate{UserId: sess.UserID, Kind: "password", Value: hash}); err != nil {
		writeError(w, r, err)
		return
	}
	s.uia.finish(uia.id)
	if req.LogoutDevices == nil || *req.LogoutDevices {
		devices, err := s.userDevices(ctx, sess.UserID)
		if err != nil {
			writeError(w, r, err)
			return
		}
		others := devices[:0]
		for _, d := range devices {
			if d != sess.DeviceID {
				others = append(others, d)
			}
		}
		if err := s.logoutDevices(ctx, sess.UserID, others); err != nil {
			writeError(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// handleDeactivate deactivates the account, then logs its devices out and
// leaves its rooms. Leaving is best effort per room (a room that cannot be
// reached keeps a stale membership); the account is deactivated whatever.
func (s *Server) handleDeactivate(w http.ResponseWriter, r *http.Request, sess *Session) {
	var req struct {
		Auth     map[string]json.RawMessage `json:"auth"`
		IDServer string                     `json:"id_server"`
		Erase    bool                       `json:"erase"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	ctx := r.Context()
	uia, err := s.runUIA(req.Auth, s.passwordUIA(ctx, sess.UserID))
	if err != nil {
		writeUIA(w, r, err)
		return
	}
	rep, err := s.accountUpdate(ctx, &pb.AccountUpdate{UserId: sess.UserID, Kind: "deactivate"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.uia.finish(uia.id)
	var out struct {
		Devices []string `json:"devices"`
		Rooms   []string `json:"rooms"`
	}
	if err := json.Unmarshal(rep.Json, &out); err != nil {
		writeError(w, r, err)
		return
	}
	if !slices.Contains(out.Devices, sess.DeviceID) {
		out.Devices = append(out.Devices, sess.DeviceID)
	}
	if err := s.logoutDevices(ctx, sess.UserID, out.Devices); err != nil {
		writeError(w, r, err)
		return
	}
	s.fanOutRooms(ctx, out.Rooms, func(room string) error {
		_, err := s.router.Request(ctx, &pb.Membership{RoomId: room, Sender: sess.UserID, Target: sess.UserID, Membership: "leave"})
		return err
	})
	// No third-party identifiers are ever bound here, so there is nothing
	// to unbind: the spec asks for "success" in that case.
	writeJSON(w, http.StatusOK, map[string]string{"id_server_unbind_result": "success"})
}

// roomFanout bounds the concurrent room requests of one profile change or
// deactivation.
const roomFanout = 8

// fanOutRooms runs fn for each room with bounded concurrency, logging (not
// returning) failures: the rooms are independent and each is retried by the
// user's next change.
func (s *Server) fanOutRooms(ctx context.Context, rooms []string, fn func(room string) error) {
	sem := make(chan struct{}, roomFanout)
	var wg sync.WaitGroup
	for _, room := range rooms {
		wg.Add(1)
		sem <- struct{}{}
		go func(room string) {
			defer func() { <-sem; wg.Done() }()
			if err := fn(room); err != nil {
				s.log.Warn("gateway: room update failed", slog.String("room", room), slog.Any("err", err))
			}
		}(room)
	}
	wg.Wait()
}

// ---- devices ----

func clientDevice(d *pb.DeviceInfo) map[string]any {
	out := map[string]any{"device_id": d.DeviceId}
	if d.DisplayName != "" {
		out["display_name"] = d.DisplayName
	}
	if d.LastSeenIp != "" {
		out["last_seen_ip"] = d.LastSeenIp
	}
	if d.LastSeenTs != 0 {
		out["last_seen_ts"] = d.LastSeenTs
	}
	return out
}

func (s *Server) deviceInfo(ctx context.Context, userID, deviceID string) (*pb.DeviceInfo, error) {
	res, err := s.router.Request(ctx, &pb.DeviceQuery{UserId: userID, DeviceId: deviceID})
	if err != nil {
		return nil, err
	}
	info, ok := res.(*pb.DeviceInfo)
	if !ok {
		return nil, errors.New("gateway: unexpected device reply")
	}
	return info, nil
}

func (s *Server) handleListDevices(w http.ResponseWriter, r *http.Request, sess *Session) {
	ctx := r.Context()
	ids, err := s.userDevices(ctx, sess.UserID)
	if err != nil {
		writeError(w, r, err)
		return
	}
	infos := make([]*pb.DeviceInfo, len(ids))
	errs := make([]error, len(ids))
	sem := make(chan struct{}, deviceFanout)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int, id string) {
			defer func() { <-sem; wg.Done() }()
			infos[i], errs[i] = s.deviceInfo(ctx, sess.UserID, id)
		}(i, id)
	}
	wg.Wait()
	devices := make([]map[string]any, 0, len(ids))
	for i := range ids {
		if errs[i] != nil {
			writeError(w, r, errs[i])
			return
		}
		if infos[i].Exists {
			devices = append(devices, clientDevice(infos[i]))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": devices})
}

func (s *Server) handleGetDevice(w http.ResponseWriter, r *http.Request, sess *Session) {
	id := r.PathValue("deviceId")
	if checkDeviceID(id) != nil || id == "" {
		writeError(w, r, actors.ErrNotFound("no such device"))
		return
	}
	info, err := s.deviceInfo(r.Context(), sess.UserID, id)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if !info.Exists {
		writeError(w, r, actors.ErrNotFound("no such device"))
		return
	}
	writeJSON(w, http.StatusOK, clientDevice(info))
}

func (s *Server) handleUpdateDevice(w http.ResponseWriter, r *http.Request, sess *Session) {
	id := r.PathValue("deviceId")
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if checkDeviceID(id) != nil || id == "" {
		writeError(w, r, actors.ErrNotFound("no such device"))
		return
	}
	ctx := r.Context()
	if req.DisplayName == nil {
		info, err := s.deviceInfo(ctx, sess.UserID, id)
		if err != nil {
			writeError(w, r, err)
			return
		}
		if !info.Exists {
			writeError(w, r, actors.ErrNotFound("no such device"))
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{})
		return
	}
	if err := checkDeviceName(*req.DisplayName); err != nil {
		writeError(w, r, err)
		return
	}
	if _, err := s.router.Request(ctx, &pb.DeviceUpdate{UserId: sess.UserID, DeviceId: id, Kind: "display_name",
		DisplayName: *req.DisplayName}); err != nil {
		writeError(w, r, err)
		return
	}
	// The name is part of the device keys others query (unsigned).
	s.notifyDeviceListChange(ctx, sess.UserID)
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) handleDeleteDevice(w http.ResponseWriter, r *http.Request, sess *Session) {
	var req struct {
		Auth map[string]json.RawMessage `json:"auth"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	id := r.PathValue("deviceId")
	ctx := r.Context()
	uia, err := s.runUIA(req.Auth, s.passwordUIA(ctx, sess.UserID))
	if err != nil {
		writeUIA(w, r, err)
		return
	}
	if checkDeviceID(id) == nil && id != "" {
		if err := s.logoutDevices(ctx, sess.UserID, []string{id}); err != nil {
			writeError(w, r, err)
			return
		}
	}
	s.uia.finish(uia.id)
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) handleDeleteDevices(w http.ResponseWriter, r *http.Request, sess *Session) {
	var req struct {
		Devices *[]string                  `json:"devices"`
		Auth    map[string]json.RawMessage `json:"auth"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if req.Devices == nil {
		writeError(w, r, errMissingParam("devices is required"))
		return
	}
	if len(*req.Devices) > maxDeleteDevices {
		writeError(w, r, actors.ErrInvalidParam("at most %d devices per request", maxDeleteDevices))
		return
	}
	ctx := r.Context()
	uia, err := s.runUIA(req.Auth, s.passwordUIA(ctx, sess.UserID))
	if err != nil {
		writeUIA(w, r, err)
		return
	}
	var ids []string
	seen := map[string]bool{}
	for _, id := range *req.Devices {
		if id != "" && checkDeviceID(id) == nil && !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	if err := s.logoutDevices(ctx, sess.UserID, ids); err != nil {
		writeError(w, r, err)
		return
	}
	s.uia.finish(uia.id)
	writeJSON(w, http.StatusOK, map[string]any{})
}

// ---- Synapse's shared-secret registration (/_synapse/admin/v1/register) ----

func (s *Server) handleSharedSecretNonce(w http.ResponseWriter, r *http.Request) {
	if s.cfg.RegistrationSharedSecret == "" {
		writeError(w, r, errStatus(http.StatusBadRequest, "M_UNKNOWN", "shared secret registration is not enabled"))
		return
	}
	// A nonce is a short-lived, node-local session like a UIA one.
	sess := s.uia.create()
	sess.data["shared_secret_nonce"] = true
	writeJSON(w, http.StatusOK, map[string]string{"nonce": sess.id})
}

func (s *Server) handleSharedSecretRegister(w http.ResponseWriter, r *http.Request) {
	if s.cfg.RegistrationSharedSecret == "" {
		writeError(w, r, errStatus(http.StatusBadRequest, "M_UNKNOWN", "shared secret registration is not enabled"))
		return
	}
	var req struct {
		Nonce       string  `json:"nonce"`
		Username    string  `json:"username"`
		Password    string  `json:"password"`
		Admin       bool    `json:"admin"`
		UserType    *string `json:"user_type"`
		Displayname *string `json:"displayname"`
		Mac         string  `json:"mac"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if req.Nonce == "" {
		writeError(w, r, errMissingParam("nonce is required"))
		return
	}
	sess := s.uia.get(req.Nonce)
	if sess == nil || sess.data["shared_secret_nonce"] != true || s.cfg.Now().Sub(sess.created) > sharedSecretNonceLifetime {
		writeError(w, r, errStatus(http.StatusBadRequest, "M_UNKNOWN", "unrecognised nonce"))
		return
	}
	// Single use, whatever happens next.
	s.uia.finish(req.Nonce)
	if req.Username == "" || strings.ContainsRune(req.Username, 0) || len(req.Username) > actors.MaxPasswordBytes {
		writeError(w, r, errStatus(http.StatusBadRequest, "M_INVALID_USERNAME", "invalid username"))
		return
	}
	if req.Password == "" || strings.ContainsRune(req.Password, 0) || len(req.Password) > actors.MaxPasswordBytes {
		writeError(w, r, actors.ErrInvalidParam("invalid password"))
		return
	}
	mac := hmac.New(sha1.New, []byte(s.cfg.RegistrationSharedSecret))
	mac.Write([]byte(req.Nonce))
	mac.Write([]byte{0})
	mac.Write([]byte(req.Username))
	mac.Write([]byte{0})
	mac.Write([]byte(req.Password))
	mac.Write([]byte{0})
	if req.Admin {
		mac.Write([]byte("admin"))
	} else {
		mac.Write([]byte("notadmin"))
	}
	if req.UserType != nil {
		mac.Write([]byte{0})
		mac.Write([]byte(*req.UserType))
	}
	want := hex.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(want), []byte(strings.ToLower(req.Mac))) {
		writeError(w, r, actors.ErrForbidden("HMAC incorrect"))
		return
	}
	ctx := r.Context()
	userID, err := s.userForLocalpart(req.Username)
	if err != nil {
		writeError(w, r, err)
		return
	}
	hash, err := s.hashPassword(req.Password)
	if err != nil {
		writeError(w, r, err)
		return
	}
	reg := &pb.Register{PasswordHash: hash, Admin: req.Admin}
	if req.Displayname != nil && *req.Displayname != "" {
		reg.Profile, _ = json.Marshal(map[string]string{"displayname": *req.Displayname})
	}
	if _, err := s.createAccount(ctx, userID, nil, reg); err != nil {
		writeError(w, r, err)
		return
	}
	token, deviceID, err := s.login(ctx, r, userID, "", "")
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"access_token": token, "user_id": userID,
		"home_server": s.server.ServerName, "device_id": deviceID})
}
