// Command kube-proxy is upstream's kube-proxy, built from the k8s.io/kubernetes
// module pinned in ../../go.mod (see upstream cmd/kube-proxy/proxy.go, which
// this mirrors). Used by the real-node tests (tests/node) for Service routing.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	os.Exit(cli.Run(app.NewProxyCommand()))
}
