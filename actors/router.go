package actors

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors/pb"
)

// Router delivers messages to actors wherever they live. Package cluster
// implements it; actors and the gateway only see this interface.
type Router interface {
	// Request delivers msg to the actor it names and waits for the reply.
	// A *pb.Error reply comes back as a *MatrixError.
	Request(ctx context.Context, msg pb.Targeted) (proto.Message, error)
	// Send delivers msg without waiting for, or expecting, a reply.
	Send(msg pb.Targeted)
}

// MatrixError is a failure with a Matrix errcode and HTTP status; it is what
// actors reply with (as *pb.Error) and what the gateway writes out.
type MatrixError struct {
	Status  int
	ErrCode string
	Message string
	// Extra fields merged into the JSON body (e.g. "soft_logout": true).
	Extra map[string]any
}

func (e *MatrixError) Error() string {
	return fmt.Sprintf("%s (%d): %s", e.ErrCode, e.Status, e.Message)
}

// Errorf builds a MatrixError.
func Errorf(status int, errcode, format string, args ...any) *MatrixError {
	return &MatrixError{Status: status, ErrCode: errcode, Message: fmt.Sprintf(format, args...)}
}

// Common errors.
func ErrForbidden(format string, args ...any) *MatrixError {
	return Errorf(http.StatusForbidden, "M_FORBIDDEN", format, args...)
}

func ErrNotFound(format string, args ...any) *MatrixError {
	return Errorf(http.StatusNotFound, "M_NOT_FOUND", format, args...)
}

func ErrBadJSON(format string, args ...any) *MatrixError {
	return Errorf(http.StatusBadRequest, "M_BAD_JSON", format, args...)
}

func ErrInvalidParam(format string, args ...any) *MatrixError {
	return Errorf(http.StatusBadRequest, "M_INVALID_PARAM", format, args...)
}

func ErrUnknown(format string, args ...any) *MatrixError {
	return Errorf(http.StatusInternalServerError, "M_UNKNOWN", format, args...)
}

// ToPB converts err into the error reply an actor sends: MatrixErrors keep
// their code, anything else is an internal error whose detail stays in the log.
func ToPB(err error) *pb.Error {
	if me, ok := err.(*MatrixError); ok {
		out := &pb.Error{Errcode: me.ErrCode, Message: me.Message, Status: int32(me.Status)}
		if len(me.Extra) > 0 {
			out.Extra, _ = json.Marshal(me.Extra)
		}
		return out
	}
	return &pb.Error{Errcode: "M_UNKNOWN", Message: "internal error", Status: http.StatusInternalServerError}
}

// FromPB converts an error reply back into a MatrixError.
func FromPB(e *pb.Error) *MatrixError {
	me := &MatrixError{Status: int(e.Status), ErrCode: e.Errcode, Message: e.Message}
	if len(e.Extra) > 0 {
		_ = json.Unmarshal(e.Extra, &me.Extra)
	}
	return me
}
