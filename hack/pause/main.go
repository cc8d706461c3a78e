// Command pause is the real node's sandbox ("pause") container: it holds a pod's namespaces open,
// reaps orphaned children (it is PID 1 of the pod when the PID namespace is shared) and exits on
// SIGTERM or SIGINT. Built statically by hack/build-node.sh because no registry serves the upstream one.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	children := make(chan os.Signal, 1)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-children:
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
