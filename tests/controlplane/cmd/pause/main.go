// Command pause is the real node's pod sandbox ("pause") process, the job of
// registry.k8s.io/pause: hold the pod's namespaces, reap adopted children, exit
// on SIGINT/SIGTERM. Built here because the node has no registry to pull from
// (tests/support/node_images.py packs it into a local image).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
