package main

import "syscall"

// childAttrs makes a started server die with the tool, even if the tool is
// killed before it can stop it.
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
