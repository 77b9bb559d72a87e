package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/cluster"
	"github.com/shoal-chat/shoal/storage"
)

// These tests run a cluster of real shoal processes on loopback. When the
// tests run under the race detector, so do the nodes.

const clusterTestSecret = "process test cluster secret"

var (
	clusterBinOnce sync.Once
	clusterBinPath string
	clusterBinErr  error
)

// clusterBinary builds the shoal binary, race-enabled when the tests are.
func clusterBinary(t *testing.T) string {
	t.Helper()
	if !raceEnabled {
		return shoalBinary(t)
	}
	clusterBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-race-bin")
		if err != nil {
			clusterBinErr = err
			return
		}
		clusterBinPath = filepath.Join(dir, "shoal")
		out, err := exec.Command("go", "build", "-race", "-o", clusterBinPath, ".").CombinedOutput()
		if err != nil {
			clusterBinErr = fmt.Errorf("go build -race: %v\n%s", err, out)
		}
	})
	if clusterBinErr != nil {
		t.Fatal(clusterBinErr)
	}
	return clusterBinPath
}

// clusterProc is one node of a process cluster; its addresses stay the same
// across restarts.
type clusterProc struct {
	name                          string
	dir                           string
	client, admin, gossip, rpcAdr string
	p                             *proc
	// serverName is the cluster's server name ("proc.test" when empty);
	// extra are more serve flags (TLS, federation).
	serverName string
	extra      []string
}

func newClusterProc(t *testing.T, name string) *clusterProc {
	return &clusterProc{name: name, dir: t.TempDir(), client: freePort(t), admin: freePort(t), gossip: freePort(t), rpcAdr: freePort(t)}
}

// start runs the node, joining through join (empty for the founder), and
// waits until its client API answers.
func (c *clusterProc) start(t *testing.T, join string) {
	t.Helper()
	name := c.serverName
	if name == "" {
		name = "proc.test"
	}
	args := []string{"serve", "--server-name", name, "--data-dir", c.dir,
		"--client-listen", c.client, "--tls-listen", "", "--admin-listen", c.admin, "--no-rate-limit", "--log-level", "warn",
		"--cluster-listen", c.gossip, "--cluster-rpc-listen", c.rpcAdr}
	args = append(args, c.extra...)
	if join != "" {
		args = append(args, "--join", join)
	}
	cmd := exec.Command(clusterBinary(t), args...)
	cmd.Env = append(os.Environ(), "SHOAL_CLUSTER_SECRET="+clusterTestSecret)
	cmd.Stderr = &prefixWriter{prefix: "[" + c.name + "] "}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, addr: c.client, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-p.exited })
	c.p = p
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + c.client + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("%s exited during start: %v", c.name, p.err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s did not start listening within 60s", c.name)
}

// prefixWriter labels a node's log lines.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
}

func (w *prefixWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line != "" {
			fmt.Fprint(os.Stderr, w.prefix+line)
		}
	}
	return len(b), nil
}

func (c *clusterProc) status(t *testing.T) *cluster.Status {
	t.Helper()
	st, _, err := fetchStatus("http://" + c.admin)
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	return st
}

// waitSettled waits until c sees exactly the members in want alive, and
// every partition served by its owner with nothing in flight.
func waitSettled(t *testing.T, c *clusterProc, want ...*clusterProc) *cluster.Status {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var why string
	for time.Now().Before(deadline) {
		st, _, err := fetchStatus("http://" + c.admin)
		if err != nil {
			why = err.Error()
		} else if why = unsettled(st, len(want)); why == "" {
			return st
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("cluster did not settle: %s", why)
	return nil
}

func unsettled(st *cluster.Status, members int) string {
	alive := 0
	for _, m := range st.Members {
		if m.Status == "member" {
			if !m.Alive || !m.Reported {
				return fmt.Sprintf("member %s alive=%v reported=%v", m.ID, m.Alive, m.Reported)
			}
			alive++
		}
	}
	if alive != members {
		return fmt.Sprintf("%d live members, want %d", alive, members)
	}
	for _, p := range st.Map {
		if p.Owner != p.Holder || p.State != "serving" {
			return fmt.Sprintf("partition %d: owner %s, holder %s, %s", p.Partition, p.Owner, p.Holder, p.State)
		}
	}
	if len(st.Handoffs) > 0 {
		return fmt.Sprintf("%d handoffs in flight", len(st.Handoffs))
	}
	return ""
}

func nodeIDOf(t *testing.T, c *clusterProc) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(c.dir, "node_id"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// via is cli's session, talking to another node.
func via(t *testing.T, cli *mautrix.Client, c *clusterProc) *mautrix.Client {
	t.Helper()
	other, err := mautrix.NewClient("http://"+c.client, cli.UserID, cli.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	other.DeviceID = cli.DeviceID
	return other
}

// timeline returns the room's message bodies, oldest first, read through
// node c.
func timeline(t *testing.T, cli *mautrix.Client, room id.RoomID) (bodies []string, ids []id.EventID) {
	t.Helper()
	from := ""
	var evs []*event.Event
	for {
		page := must(cli.Messages(bg(), room, from, "", mautrix.DirectionBackward, nil, 1000))(t)
		evs = append(evs, page.Chunk...)
		if page.End == "" || len(page.Chunk) == 0 {
			break
		}
		from = page.End
	}
	slices.Reverse(evs)
	for _, ev := range evs {
		if ev.Type != event.EventMessage {
			continue
		}
		body, _ := ev.Content.Raw["body"].(string)
		bodies = append(bodies, body)
		ids = append(ids, ev.ID)
	}
	return bodies, ids
}

// sendRetrying sends one message, repeating the same transaction on
// another node while the cluster answers 503 or a node is gone, the way a
// client retries: a transaction ID makes the repeat safe.
func sendRetrying(t *testing.T, clients []*mautrix.Client, room id.RoomID, body, txn string, start int) (id.EventID, int, error) {
	var lastErr error
	retries := 0
	for attempt := 0; attempt < 60; attempt++ {
		cli := clients[(start+attempt)%len(clients)]
		if cli == nil {
			continue
		}
		resp, err := cli.SendMessageEvent(bg(), room, event.EventMessage, map[string]any{"msgtype": "m.text", "body": body},
			mautrix.ReqSendEvent{TransactionID: txn})
		if err == nil {
			return resp.EventID, retries, nil
		}
		lastErr = err
		retries++
		time.Sleep(100 * time.Millisecond)
	}
	return "", retries, lastErr
}

// The cluster end to end with real processes: users registered on one
// node, rooms created on another, messages sent through a third, everyone
// syncing through any; then under a steady send load a fourth node joins
// and one leaves gracefully, with no event lost or duplicated and one
// timeline for all; then kill -9 of a node: its partitions answer 503 with
// Retry-After, the others keep serving, and after it restarts everything
// it held is back.
func TestClusterProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	a, b, c, d := newClusterProc(t, "a"), newClusterProc(t, "b"), newClusterProc(t, "c"), newClusterProc(t, "d")
	a.start(t, "")
	b.start(t, a.gossip)
	c.start(t, a.gossip)
	waitSettled(t, a, a, b, c)

	// One server identity.
	key := func(c *clusterProc) string {
		data, err := os.ReadFile(filepath.Join(c.dir, "signing.key"))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	if key(a) != key(b) || key(a) != key(c) {
		t.Fatal("nodes have different signing keys")
	}

	// Users registered on a, a room created on b, messages through c.
	alice, bob, carol := procClient(t, a.client, "alice"), procClient(t, a.client, "bob"), procClient(t, a.client, "carol")
	room := must(via(t, bob, b).CreateRoom(bg(), &mautrix.ReqCreateRoom{Preset: "public_chat"}))(t).RoomID
	must(via(t, alice, c).JoinRoomByID(bg(), room))(t)
	must(via(t, carol, b).JoinRoomByID(bg(), room))(t)

	// A long-poll on a wakes on a message sent through c.
	since := must(alice.SyncRequest(bg(), 0, "", "", false, event.PresenceOnline))(t).NextBatch
	woke := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		resp, err := alice.SyncRequest(bg(), 30000, since, "", false, event.PresenceOnline)
		if err == nil && len(resp.Rooms.Join[room].Timeline.Events) > 0 {
			woke <- time.Since(start)
			return
		}
		woke <- -1
	}()
	time.Sleep(300 * time.Millisecond)
	sent := time.Now()
	for i, u := range []*mautrix.Client{alice, bob, carol} {
		must(via(t, u, c).SendText(bg(), room, fmt.Sprintf("hello %d", i)))(t)
	}
	select {
	case took := <-woke:
		if took < 0 {
			t.Fatal("long-poll on a did not return the message sent through c")
		}
		t.Logf("long-poll woke %v after the send", time.Since(sent).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("long-poll on a did not wake within 10s of a message sent through c")
	}
	// Everyone syncs through any node and sees the same timeline.
	want, _ := timeline(t, via(t, alice, a), room)
	for _, u := range []*mautrix.Client{alice, bob, carol} {
		for _, n := range []*clusterProc{a, b, c} {
			got, _ := timeline(t, via(t, u, n), room)
			if !slices.Equal(got, want) {
				t.Fatalf("%s via %s sees %v, want %v", u.UserID, n.name, got, want)
			}
		}
		sync := must(via(t, u, b).SyncRequest(bg(), 0, "", "", false, event.PresenceOnline))(t)
		if len(sync.Rooms.Join[room].Timeline.Events) == 0 {
			t.Fatalf("%s: initial sync via b shows no timeline", u.UserID)
		}
	}

	// Steady send load while d joins and b leaves.
	var nodesMu sync.Mutex
	nodes := []*clusterProc{a, b, c}
	users := []*mautrix.Client{alice, bob, carol}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ackedMu sync.Mutex
	acked := map[string]id.EventID{} // body → event
	var retries atomic.Int64
	errs := make(chan error, len(users))
	for w, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				nodesMu.Lock()
				clients := make([]*mautrix.Client, len(nodes))
				for k, n := range nodes {
					clients[k] = via(t, u, n)
				}
				nodesMu.Unlock()
				body := fmt.Sprintf("load %d-%d", w, i)
				ev, r, err := sendRetrying(t, clients, room, body, fmt.Sprintf("load-%d-%d", w, i), i)
				retries.Add(int64(r))
				if err != nil {
					errs <- fmt.Errorf("%s: %s never acknowledged: %w", u.UserID, body, err)
					return
				}
				ackedMu.Lock()
				acked[body] = ev
				ackedMu.Unlock()
			}
		}()
	}
	waitAcked := func(n int) {
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			ackedMu.Lock()
			have := len(acked)
			ackedMu.Unlock()
			if have >= n {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("load stalled below %d acknowledged sends", n)
	}
	waitAcked(30)

	d.start(t, a.gossip)
	nodesMu.Lock()
	nodes = append(nodes, d)
	nodesMu.Unlock()
	waitSettled(t, a, a, b, c, d)
	ackedMu.Lock()
	mark := len(acked)
	ackedMu.Unlock()
	waitAcked(mark + 30)

	// b leaves gracefully; clients stop using it once it is gone.
	bID := nodeIDOf(t, b)
	out, err := exec.Command(clusterBinary(t), "cluster", "leave", "--url", "http://"+b.admin).CombinedOutput()
	if err != nil {
		t.Fatalf("shoal cluster leave: %v\n%s", err, out)
	}
	t.Logf("shoal cluster leave:\n%s", out)
	select {
	case <-b.p.exited:
		if b.p.err != nil {
			t.Fatalf("b exited with %v after leaving", b.p.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("b still running 30s after leaving")
	}
	nodesMu.Lock()
	nodes = []*clusterProc{a, c, d}
	nodesMu.Unlock()
	st := waitSettled(t, a, a, c, d)
	for _, m := range st.Members {
		if m.ID == bID && m.Status != "left" {
			t.Fatalf("b is %q in the roster after leaving", m.Status)
		}
	}
	if files, _ := storage.PartitionFiles(b.dir); len(files) != 0 {
		t.Fatalf("b still has partition files %v after leaving", files)
	}
	ackedMu.Lock()
	mark = len(acked)
	ackedMu.Unlock()
	waitAcked(mark + 30)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Zero lost, zero duplicated, one timeline.
	ref, refIDs := timeline(t, via(t, alice, a), room)
	counts := map[string]int{}
	for _, body := range ref {
		counts[body]++
	}
	for body, ev := range acked {
		if counts[body] != 1 {
			t.Fatalf("%q appears %d times in the timeline", body, counts[body])
		}
		if i := slices.Index(ref, body); refIDs[i] != ev {
			t.Fatalf("%q: acknowledged as %s, stored as %s", body, ev, refIDs[i])
		}
	}
	for body, n := range counts {
		if n != 1 {
			t.Fatalf("%q appears %d times", body, n)
		}
	}
	for _, u := range users {
		for _, n := range []*clusterProc{a, c, d} {
			got, _ := timeline(t, via(t, u, n), room)
			if !slices.Equal(got, ref) {
				t.Fatalf("%s via %s sees another timeline (%d events, want %d)", u.UserID, n.name, len(got), len(ref))
			}
		}
	}
	t.Logf("%d sends acknowledged during join and leave, %d client retries, none lost or duplicated", len(acked), retries.Load())

	// kill -9: c's partitions answer 503 with Retry-After, the rest serve.
	// The user sending must not live on c itself (its device checks every
	// request's token), and one room must, one not.
	cID := nodeIDOf(t, c)
	ownerOf := func(identity string) string {
		return st.Map[storage.PartitionOf(identity, st.Partitions)].Owner
	}
	var kim *mautrix.Client
	for i := 0; kim == nil; i++ {
		if i > 40 {
			t.Fatal("every user landed on c")
		}
		cli := procClient(t, a.client, fmt.Sprintf("kim%d", i))
		if ownerOf("user/"+string(cli.UserID)) != cID && ownerOf("device/"+string(cli.UserID)+"/"+string(cli.DeviceID)) != cID {
			kim = cli
		}
	}
	var onC, offC id.RoomID
	for i := 0; onC == "" || offC == ""; i++ {
		if i > 60 {
			t.Fatal("no room landed on c, or none elsewhere")
		}
		r := must(via(t, kim, a).CreateRoom(bg(), &mautrix.ReqCreateRoom{Preset: "public_chat"}))(t).RoomID
		owner := ownerOf("room/" + string(r))
		switch {
		case owner == cID && onC == "":
			onC = r
		case owner != cID && offC == "":
			offC = r
		}
	}
	var before []string
	for i := range 5 {
		must(via(t, kim, d).SendText(bg(), onC, fmt.Sprintf("before kill %d", i)))(t)
		before = append(before, fmt.Sprintf("before kill %d", i))
	}
	mustOK(t, c.p.cmd.Process.Signal(syscall.SIGKILL))
	<-c.p.exited
	killed := time.Now()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := a.status(t)
		gone := false
		for _, m := range st.Members {
			if m.ID == cID && !m.Alive {
				gone = true
			}
		}
		if gone {
			t.Logf("a saw c gone %v after kill -9", time.Since(killed).Round(100*time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a still sees c alive 30s after kill -9")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, n := range []*clusterProc{a, d} {
		status, retryAfter, body := rawSend(t, kim, n, onC, "during outage")
		if status != http.StatusServiceUnavailable || retryAfter == "" || !strings.Contains(body, "M_UNAVAILABLE") {
			t.Fatalf("send to c's room via %s while c is down: %d Retry-After=%q %s", n.name, status, retryAfter, body)
		}
		must(via(t, kim, n).SendText(bg(), offC, "still serving via "+n.name))(t)
	}

	// c comes back with its data.
	c.start(t, a.gossip)
	waitSettled(t, a, a, c, d)
	got, _ := timeline(t, via(t, kim, d), onC)
	if !slices.Equal(got, before) {
		t.Fatalf("after c's restart its room holds %v, want %v", got, before)
	}
	must(via(t, kim, a).SendText(bg(), onC, "after restart"))(t)
	out, err = exec.Command(clusterBinary(t), "cluster", "status", "--url", "http://"+a.admin).CombinedOutput()
	if err != nil {
		t.Fatalf("shoal cluster status: %v\n%s", err, out)
	}
	t.Logf("shoal cluster status:\n%s", out)
}

// rawSend sends a message with net/http, to see the status and headers.
func rawSend(t *testing.T, cli *mautrix.Client, n *clusterProc, room id.RoomID, body string) (int, string, string) {
	t.Helper()
	content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": body})
	url := fmt.Sprintf("http://%s/_matrix/client/v3/rooms/%s/send/m.room.message/raw%d", n.client, room, time.Now().UnixNano())
	req, err := http.NewRequest(http.MethodPut, url, strings.NewReader(string(content)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Retry-After"), string(data)
}

// BenchmarkClusterSend measures message sends per second over HTTP through
// one node, and through three nodes of one cluster on this same machine
// (clients spread over the nodes, so most requests take a remote hop).
// Each of 16 users sends into a room of its own.
func BenchmarkClusterSend(b *testing.B) {
	for _, nodes := range []int{1, 3} {
		b.Run(fmt.Sprintf("%dnodes", nodes), func(b *testing.B) {
			var procs []*clusterProc
			for i := range nodes {
				c := &clusterProc{name: fmt.Sprint(i), dir: b.TempDir(), client: freePortTB(b), admin: freePortTB(b), gossip: freePortTB(b), rpcAdr: freePortTB(b)}
				join := ""
				if i > 0 {
					join = procs[0].gossip
				}
				c.startB(b, join)
				procs = append(procs, c)
			}
			for {
				st, _, err := fetchStatus("http://" + procs[0].admin)
				if err == nil && unsettled(st, nodes) == "" {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			type sender struct {
				cli  *mautrix.Client
				room id.RoomID
			}
			var senders []sender
			for u := range 16 {
				cli, err := mautrix.NewClient("http://"+procs[0].client, "", "")
				if err != nil {
					b.Fatal(err)
				}
				name := fmt.Sprintf("bench%d", u)
				resp, err := cli.RegisterDummy(bg(), &mautrix.ReqRegister[any]{Username: name, Password: "pw-" + name})
				if err != nil {
					b.Fatal(err)
				}
				cli.UserID, cli.AccessToken, cli.DeviceID = resp.UserID, resp.AccessToken, resp.DeviceID
				room, err := cli.CreateRoom(bg(), &mautrix.ReqCreateRoom{Preset: "private_chat"})
				if err != nil {
					b.Fatal(err)
				}
				on, err := mautrix.NewClient("http://"+procs[u%nodes].client, cli.UserID, cli.AccessToken)
				if err != nil {
					b.Fatal(err)
				}
				senders = append(senders, sender{on, room.RoomID})
			}
			var next atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				s := senders[int(next.Add(1)-1)%len(senders)]
				for i := 0; pb.Next(); i++ {
					if _, err := s.cli.SendText(bg(), s.room, fmt.Sprintf("m%d", i)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sends/s")
		})
	}
}

func freePortTB(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startB is start for benchmarks.
func (c *clusterProc) startB(b *testing.B, join string) {
	b.Helper()
	args := []string{"serve", "--server-name", "bench.test", "--data-dir", c.dir,
		"--client-listen", c.client, "--tls-listen", "", "--admin-listen", c.admin, "--no-rate-limit", "--log-level", "error",
		"--cluster-listen", c.gossip, "--cluster-rpc-listen", c.rpcAdr}
	if join != "" {
		args = append(args, "--join", join)
	}
	cmd := exec.Command(benchBinary(b), args...)
	cmd.Env = append(os.Environ(), "SHOAL_CLUSTER_SECRET="+clusterTestSecret)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	b.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get("http://" + c.client + "/_matrix/client/versions"); err == nil {
			resp.Body.Close()
			return
		}
	}
	b.Fatalf("node %s did not start", c.name)
}

var (
	benchBinOnce sync.Once
	benchBinPath string
	benchBinErr  error
)

// benchBinary builds shoal without the race detector.
func benchBinary(b *testing.B) string {
	benchBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-bench-bin")
		if err != nil {
			benchBinErr = err
			return
		}
		benchBinPath = filepath.Join(dir, "shoal")
		if out, err := exec.Command("go", "build", "-o", benchBinPath, ".").CombinedOutput(); err != nil {
			benchBinErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if benchBinErr != nil {
		b.Fatal(benchBinErr)
	}
	return benchBinPath
}
