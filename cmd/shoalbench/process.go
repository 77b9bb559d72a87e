package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

const (
	startTimeout = 90 * time.Second // Dendrite migrates its SQLite files on the first start
	stopTimeout  = 15 * time.Second
)

// process is a server the tool started and must stop.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed once the process has exited
	err     error         // its exit status, once exited
}

// startProcess runs argv with its output in dir/<name>.log.
func startProcess(name, dir string, argv []string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = childAttrs()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, argv[0], err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.exited)
	}()
	return p, nil
}

// waitReady polls /_matrix/client/versions until the server answers, it
// exits, or startTimeout passes.
func (p *process) waitReady(ctx context.Context, hs *homeserver) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		probe, done := context.WithTimeout(ctx, 2*time.Second)
		err := hs.versions(probe)
		done()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited while starting (%v); its log ends:\n%s", p.name, p.err, p.logTail(2000))
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer %s/_matrix/client/versions within %v (last: %v); its log ends:\n%s",
				p.name, hs.base, startTimeout, err, p.logTail(2000))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and waits; after stopTimeout it kills the process.
func (p *process) stop() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s had already exited: %v", p.name, p.err)
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s: %w", p.name, err)
	}
	select {
	case <-p.exited:
		var exitErr *exec.ExitError
		if errors.As(p.err, &exitErr) && !exitErr.Exited() {
			return nil // ended by the signal itself: the usual way for some servers
		}
		if p.err != nil {
			return fmt.Errorf("%s after SIGTERM: %w", p.name, p.err)
		}
		return nil
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s still running %v after SIGTERM; killed", p.name, stopTimeout)
	}
}

// logTail is the last n bytes of the process's output.
func (p *process) logTail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(data) > n {
		data = data[len(data)-n:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	return string(bytes.TrimSpace(data))
}

// freeLoopbackAddr finds a free TCP port on 127.0.0.1.
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
