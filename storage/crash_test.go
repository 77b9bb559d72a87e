package storage

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// crashChildEnv names the partition file the crash child writes to; the
// child test does nothing without it.
const crashChildEnv = "SHOAL_STORAGE_CRASH_CHILD"

// TestKill9LosesNoAcknowledgedWrite runs a child process that writes with
// Update from several goroutines and prints every key whose Update returned
// nil, kills it with SIGKILL in the middle of its writes, and checks that the
// reopened file holds every key the child acknowledged.
func TestKill9LosesNoAcknowledgedWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()

	const killAfter = 2000
	var acked []string
	r := bufio.NewReader(stdout)
	deadline := time.AfterFunc(60*time.Second, func() { _ = cmd.Process.Kill() })
	defer deadline.Stop()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			// Only complete lines are acknowledgements.
			if err != io.EOF {
				t.Fatal(err)
			}
			break
		}
		if key, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "ACK "); ok {
			acked = append(acked, key)
		}
		if len(acked) == killAfter && !killed {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
			// Keep reading: acknowledgements still in the pipe count.
		}
	}
	werr := cmd.Wait()
	if !killed {
		t.Fatalf("child ended before %d acknowledgements (got %d): %v", killAfter, len(acked), werr)
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", werr)
	}

	p, err := Open(path, 1, Options{})
	if err != nil {
		t.Fatalf("reopening after kill -9: %v", err)
	}
	defer p.Close()
	missing := 0
	total := 0
	err = p.View(func(tx *bbolt.Tx) error {
		for err := range tx.Check() {
			t.Errorf("file inconsistent after kill -9: %v", err)
		}
		b := tx.Bucket(testBucket)
		if b == nil {
			return fmt.Errorf("bucket missing after kill -9")
		}
		total = b.Stats().KeyN
		for _, k := range acked {
			if b.Get([]byte(k)) == nil {
				missing++
				if missing <= 10 {
					t.Errorf("acknowledged key %s lost", k)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged keys lost", missing, len(acked))
	}
	t.Logf("%d acknowledged keys all present (%d in the file)", len(acked), total)
}

// TestCrashChild is the child of TestKill9LosesNoAcknowledgedWrite.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashChildEnv)
	if path == "" {
		t.Skip("runs only as the child of TestKill9LosesNoAcknowledgedWrite")
	}
	p, err := Open(path, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The parent kills this process long before the bound; the bound only
	// keeps an orphaned child from writing forever.
	const writers, perWriter = 8, 20000
	stop := time.Now().Add(60 * time.Second)
	var out sync.Mutex
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWriter && time.Now().Before(stop); i++ {
				key := fmt.Sprintf("w%d-%06d", w, i)
				if err := p.Update(context.Background(), put([]byte(key), key)); err != nil {
					t.Error(err)
					return
				}
				out.Lock()
				// One write call per line: the parent sees whole lines.
				_, _ = os.Stdout.WriteString("ACK " + key + "\n")
				out.Unlock()
			}
		}()
	}
	wg.Wait()
	_ = p.Close()
}
