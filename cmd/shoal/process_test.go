package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// shoalBinary builds the real binary once per test run.
func shoalBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "shoal")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type proc struct {
	cmd    *exec.Cmd
	addr   string
	exited chan struct{} // closed when the process has exited
	err    error         // its exit status, once exited
}

func startProc(t *testing.T, dataDir, addr string) *proc {
	t.Helper()
	cmd := exec.Command(shoalBinary(t), "serve", "--server-name", "proc.test", "--data-dir", dataDir,
		"--client-listen", addr, "--tls-listen", "", "--admin-listen", "", "--no-rate-limit", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, addr: addr, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-p.exited })
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("shoal exited during start: %v", p.err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("shoal did not start listening within 30s")
	return nil
}

func procClient(t *testing.T, addr, user string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient("http://"+addr, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp := must(cli.RegisterDummy(bg(), &mautrix.ReqRegister[any]{Username: user, Password: "pw-" + user}))(t)
	cli.UserID, cli.AccessToken, cli.DeviceID = resp.UserID, resp.AccessToken, resp.DeviceID
	return cli
}

// kill -9 of a node under a steady send load loses no acknowledged event.
func TestKill9LosesNoAcknowledgedEvent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dataDir, addr := t.TempDir(), freePort(t)
	p := startProc(t, dataDir, addr)
	alice := procClient(t, addr, "alice")
	room := must(alice.CreateRoom(bg(), &mautrix.ReqCreateRoom{Preset: "public_chat"}))(t).RoomID

	var mu sync.Mutex
	var acked []id.EventID
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				resp, err := alice.SendMessageEvent(ctx, room, event.EventMessage,
					map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("w%d-%d", w, i)},
					mautrix.ReqSendEvent{TransactionID: fmt.Sprintf("w%d-%d", w, i)})
				if err != nil {
					return // the node is gone
				}
				mu.Lock()
				acked = append(acked, resp.EventID)
				mu.Unlock()
			}
		}(w)
	}
	// Let the load run, then kill the process without warning.
	for {
		time.Sleep(100 * time.Millisecond)
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 200 {
			break
		}
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	stop()
	wg.Wait()

	startProc(t, dataDir, addr)
	var have []id.EventID
	from := ""
	for {
		page := must(alice.Messages(bg(), room, from, "", mautrix.DirectionBackward, nil, 1000))(t)
		have = append(have, eventIDs(page.Chunk)...)
		if page.End == "" || len(page.Chunk) == 0 {
			break
		}
		from = page.End
	}
	for _, e := range acked {
		if !slices.Contains(have, e) {
			t.Fatalf("acknowledged event %s lost by kill -9 (%d acknowledged, %d stored)", e, len(acked), len(have))
		}
	}
	t.Logf("%d acknowledged events, all present after kill -9", len(acked))
}

// SIGTERM stops a node within 5 s even with a long-poll open; SIGSTOP and
// SIGCONT do no harm.
func TestSignals(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dataDir, addr := t.TempDir(), freePort(t)
	p := startProc(t, dataDir, addr)
	alice := procClient(t, addr, "alice")
	since := must(alice.SyncRequest(bg(), 0, "", "", false, event.PresenceOnline))(t).NextBatch

	mustOK(t, p.cmd.Process.Signal(syscall.SIGSTOP))
	time.Sleep(300 * time.Millisecond)
	mustOK(t, p.cmd.Process.Signal(syscall.SIGCONT))
	must(alice.Whoami(bg()))(t)

	go func() { _, _ = alice.SyncRequest(bg(), 120000, since, "", false, event.PresenceOnline) }()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	mustOK(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.exited:
		if p.err != nil {
			t.Fatalf("exit after SIGTERM: %v", p.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("node still running 5s after SIGTERM")
	}
	t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))

	// The state is intact for the next start.
	startProc(t, dataDir, addr)
	must(alice.Whoami(bg()))(t)
}
