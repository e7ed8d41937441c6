# The real Kubernetes control plane for the integration tests (kube-apiserver,
# kube-controller-manager, kubectl, etcd built from pinned Go modules in
# tests/controlplane/). A no-op when .controlplane/bin is up to date.
.PHONY: controlplane controlplane-clean

controlplane:
	tests/controlplane/build.sh

controlplane-clean:
	rm -rf .controlplane
