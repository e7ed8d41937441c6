// Command coredns is CoreDNS (github.com/coredns/coredns, pinned in go.mod) with only the plugins the real
// node's cluster DNS uses (tests/support/node_services.py writes its Corefile): the Kubernetes plugin
// answers for Services and pods, the rest are the ones a kubeadm cluster's Corefile lists.
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver" // the server and its directives
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
