// Command kubelet is upstream's kubelet, built from the k8s.io/kubernetes
// module pinned in ../../go.mod (see upstream cmd/kubelet/kubelet.go, which
// this mirrors). Used by the real-node tests (tests/node), not by the
// control-plane-only integration tests.
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	os.Exit(cli.Run(app.NewKubeletCommand(context.Background())))
}
