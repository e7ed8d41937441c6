// Command kube-controller-manager is upstream's kube-controller-manager (Job,
// Deployment, ReplicaSet, garbage collector, ...), built from the
// k8s.io/kubernetes module pinned in ../../go.mod (mirrors upstream
// cmd/kube-controller-manager/controller-manager.go).
package main

import (
	"os"
	_ "time/tzdata" // for CronJob time zone support

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
