package gateway_test

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

func scrape(t *testing.T, adminAddr string) string {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	return string(raw)
}

// metricValue is the value of the first sample whose line starts with
// prefix (name and labels).
func metricValue(t *testing.T, text, prefix string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return v
		}
	}
	t.Fatalf("no sample %s in:\n%s", prefix, text)
	return 0
}

// The admin listener serves Prometheus metrics — requests by route
// pattern (never raw paths), latency, actors, storage commits, open
// long-polls — and pprof; the client listeners serve neither.
func TestAdminMetricsAndPprof(t *testing.T) {
	node := shoaltest.Start(t, func(cfg *gateway.NodeConfig) { cfg.AdminListen = "127.0.0.1:0" })
	if node.AdminAddr == "" {
		t.Fatal("no admin address")
	}
	rt := http.DefaultTransport
	tok := register(t, rt, node.BaseURL, "alice")
	_, created, _ := jsonCall(t, rt, "POST", node.BaseURL+"/_matrix/client/v3/createRoom", tok, map[string]any{})
	room := created["room_id"].(string)
	_, first, _ := jsonCall(t, rt, "GET", node.BaseURL+"/_matrix/client/v3/sync", tok, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		jsonCall(t, rt, "GET", node.BaseURL+"/_matrix/client/v3/sync?timeout=20000&since="+first["next_batch"].(string), tok, nil)
	}()
	var text string
	deadline := time.Now().Add(10 * time.Second)
	for {
		text = scrape(t, node.AdminAddr)
		if metricValue(t, text, "shoal_sync_long_polls_open") == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the open long-poll is not counted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v := metricValue(t, text, `shoal_http_requests_total{code="200",method="POST",route="POST /_matrix/client/v3/register"}`); v != 1 {
		t.Errorf("register count %v", v)
	}
	if v := metricValue(t, text, `shoal_http_request_duration_seconds_count{method="POST",route="POST /_matrix/client/v3/createRoom"}`); v != 1 {
		t.Errorf("createRoom latency count %v", v)
	}
	if v := metricValue(t, text, "shoal_actor_mailbox_depth"); v < 0 {
		t.Fatalf("mailbox depth %v", v)
	}
	if metricValue(t, text, "shoal_actors_active") < 2 {
		t.Error("actors not counted")
	}
	if metricValue(t, text, `shoal_storage_commit_duration_seconds_count{outcome="ok"}`) < 1 ||
		metricValue(t, text, "shoal_storage_commit_batch_size_count") < 1 {
		t.Error("storage commits not measured")
	}
	if metricValue(t, text, "shoal_http_requests_in_flight") < 1 {
		t.Error("the long-poll is not in flight")
	}
	if strings.Contains(text, room) || regexp.MustCompile(`route="[^"]*@`).MatchString(text) {
		t.Error("raw paths leak into metric labels")
	}
	// Wake the poll; the gauge goes back down.
	jsonCall(t, rt, "PUT", node.BaseURL+"/_matrix/client/v3/rooms/"+room+"/send/m.room.message/t1", tok, map[string]any{"msgtype": "m.text", "body": "hi"})
	<-done
	if v := metricValue(t, scrape(t, node.AdminAddr), "shoal_sync_long_polls_open"); v != 0 {
		t.Errorf("long-polls open after it ended: %v", v)
	}

	resp, err := http.Get("http://" + node.AdminAddr + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("pprof: %d", resp.StatusCode)
	}
	for _, p := range []string{"/metrics", "/debug/pprof/"} {
		if status, _, _ := rawDo(t, rt, "GET", node.BaseURL+p, "", nil); status != 404 {
			t.Errorf("client listener serves %s: %d", p, status)
		}
	}
}
