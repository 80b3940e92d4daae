// Command pause is the pod sandbox process: it holds a pod's namespaces open by doing nothing
// until it is told to stop. As PID 1 of the pod's PID namespace it also reaps orphaned children,
// which the kernel reparents to it; unreaped they would pile up as zombies.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is stamped at build time: -ldflags '-X main.version=...'.
var version = "dev"

func main() {
	for _, arg := range os.Args[1:] {
		switch arg {
		case "-v", "--version", "-version":
			fmt.Println("pause", version)
			return
		default:
			fmt.Fprintf(os.Stderr, "pause: unknown argument %q\n", arg)
			os.Exit(2)
		}
	}

	// Buffered so a signal arriving while we reap is not dropped; SIGCHLD coalesces anyway,
	// hence the reap loop drains every exited child rather than one per signal.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not PID 1, orphans will not be reaped here")
	}
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every child that has exited, without blocking on those still running.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
