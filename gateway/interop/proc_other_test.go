//go:build !linux

package interop

import "syscall"

// childAttrs: only Linux can tie a child's life to its parent's; elsewhere
// the test's cleanup stops the server.
func childAttrs() *syscall.SysProcAttr { return nil }
