package gateway_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/shoal-chat/shoal/cluster"
	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// The admin listener reports the cluster; a one-node server holds every
// partition and has no cluster to leave.
func TestClusterAdminEndpoints(t *testing.T) {
	node := shoaltest.Start(t, func(cfg *gateway.NodeConfig) { cfg.AdminListen = "127.0.0.1:0" })
	base := "http://" + node.AdminAddr
	resp, err := http.Get(base + "/_shoal/cluster/status")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var st cluster.Status
	if resp.StatusCode != 200 || json.Unmarshal(body, &st) != nil {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	if st.Partitions != 4 || len(st.Map) != 4 || len(st.Members) != 1 || !st.Members[0].Reported || len(st.Members[0].Holds) != 4 {
		t.Fatalf("one-node status: %s", body)
	}
	for _, p := range st.Map {
		if p.State != "serving" {
			t.Fatalf("partition %d is %s", p.Partition, p.State)
		}
	}
	resp, err = http.Post(base+"/_shoal/cluster/leave", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), "one-node") {
		t.Fatalf("leave on a one-node server: %d %s", resp.StatusCode, body)
	}
	// The metrics are still there.
	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("metrics: %d", resp.StatusCode)
	}
}
