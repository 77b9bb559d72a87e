package gateway

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

// Pushes reach loopback only when PushAllowPrivate says so.
func TestPushSenderRefusesPrivateAddresses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"rejected":[]}`))
	}))
	defer srv.Close()
	url := srv.URL + "/_matrix/push/v1/notify"
	if _, _, err := newPushSender(Config{}).Post(context.Background(), url, []byte("{}")); !errors.Is(err, errPreviewBlocked) {
		t.Fatalf("push to loopback without PushAllowPrivate: err = %v", err)
	}
	status, body, err := newPushSender(Config{PushAllowPrivate: true}).Post(context.Background(), url, []byte("{}"))
	if err != nil || status != http.StatusOK || string(body) != `{"rejected":[]}` {
		t.Fatalf("push with PushAllowPrivate: %d %q %v", status, body, err)
	}
}
