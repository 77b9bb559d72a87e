package actors

import (
	"encoding/json"
	"net/http"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

const (
	// MaxReportsKept is how many of a user's reports are kept; older ones
	// are dropped.
	MaxReportsKept = 1000
	// reportsPerMinute bounds how fast one user may report, so reports
	// cannot be used to fill the disk or flood admins.
	reportsPerMinute = 10
	reportWindowMs   = 60_000
)

// addReport stores a report the user made (AccountUpdate kind report,
// value = the report's JSON object, built by the gateway). A user may make
// reportsPerMinute reports a minute; beyond that 429 M_LIMIT_EXCEEDED.
// The window lives in memory: a restart forgets it, which only ever lets a
// few more through.
func (u *user) addReport(m *pb.AccountUpdate) acctResult {
	if _, err := u.account(false); err != nil {
		return acctFail(err)
	}
	if !json.Valid(m.Value) {
		return acctFail(ErrBadJSON("report is not valid JSON"))
	}
	now := u.env.NowMillis()
	recent := u.reportTimes[:0]
	for _, ts := range u.reportTimes {
		if now-ts < reportWindowMs {
			recent = append(recent, ts)
		}
	}
	u.reportTimes = recent
	if len(recent) >= reportsPerMinute {
		wait := reportWindowMs - (now - recent[0])
		return acctFail(&MatrixError{Status: http.StatusTooManyRequests, ErrCode: "M_LIMIT_EXCEEDED",
			Message: "too many reports", Extra: map[string]any{"retry_after_ms": wait}})
	}
	if err := u.write(func(ut storage.UserTx) error {
		_, err := ut.PutReport(m.Value, MaxReportsKept)
		return err
	}); err != nil {
		return acctFail(err)
	}
	u.reportTimes = append(u.reportTimes, now)
	return acctJSON(map[string]any{})
}

// reports answers AccountQuery kind reports: {"reports":[newest first]}.
func (u *user) reports() acctResult {
	if err := u.ready(); err != nil {
		return acctFail(err)
	}
	var list []json.RawMessage
	if err := u.view(func(ut storage.UserTx) error {
		var err error
		list, err = ut.Reports(MaxReportsKept)
		return err
	}); err != nil {
		return acctFail(err)
	}
	if list == nil {
		list = []json.RawMessage{}
	}
	b, err := json.Marshal(map[string]any{"reports": list})
	if err != nil {
		return acctFail(err)
	}
	return acctOK(&pb.AccountQueryReply{Found: u.st.Account != nil, Json: b})
}
