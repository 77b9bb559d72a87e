package actors

import (
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// moderationFlags is the part of the account that devices enforce.
func moderationFlags(a *storage.Account) map[string]bool {
	return map[string]bool{"locked": a.Locked, "suspended": a.Suspended}
}

// acctJSON wraps a JSON reply of an account update.
func acctJSON(v any) acctResult {
	rep, err := acctJSONReply(v)
	if err != nil {
		return acctFail(err)
	}
	return acctOK(rep)
}

// setModeration suspends or locks the account, or lifts either (MSC4323,
// AccountUpdate kind moderation: key "suspend" or "lock", value "true" or
// "false"). The gateway has checked that the caller is a server admin who
// is not the target; the actor refuses other admins and unknown or
// deactivated accounts (404, as MSC4323 says). The reply lists the devices
// so the gateway can copy the flags to each.
func (u *user) setModeration(m *pb.AccountUpdate) acctResult {
	a, err := u.account(true)
	if err != nil {
		return acctFail(err)
	}
	if a.Deactivated {
		return acctFail(ErrNotFound("no such user"))
	}
	if a.Admin {
		return acctFail(ErrForbidden("server admins cannot be suspended or locked"))
	}
	var on bool
	switch string(m.Value) {
	case "true":
		on = true
	case "false":
	default:
		return acctFail(ErrInvalidParam("moderation value must be true or false"))
	}
	na := *a
	switch m.Key {
	case "suspend":
		na.Suspended = on
	case "lock":
		na.Locked = on
	default:
		return acctFail(ErrInvalidParam("unknown moderation %q", m.Key))
	}
	if na.Suspended != a.Suspended || na.Locked != a.Locked {
		if err := u.write(func(ut storage.UserTx) error { return ut.PutAccount(&na) }); err != nil {
			return acctFail(err)
		}
		u.st.Account = &na
	}
	return acctJSON(map[string]any{"locked": na.Locked, "suspended": na.Suspended, "devices": u.deviceList()})
}
