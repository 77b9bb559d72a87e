package interop

import "syscall"

// childAttrs makes a started server die with the test binary, even when
// the binary is killed (a test timeout) before it can stop the server.
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
