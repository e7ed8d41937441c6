# A real single-node cluster for the end-to-end tests (tests/node, marker `node`): the control plane of
# mk/controlplane.mk plus kube-scheduler, kubelet and kube-proxy built from the same pinned Go module, CoreDNS,
# Debian's containerd, runc, iptables and CNI plugins, all inside their own PID, mount and network
# namespaces (tests/node/namespace.sh), so nothing on the host changes.
#
#   make node-tools   containerd, runc, iptables, CNI plugins from Debian (root; once per machine)
#   make node-up      start the node in the background; prints the kubeconfig to use kubectl with
#   make node-down    stop it (everything it started goes with its PID namespace)
#   make test-node    build images and binaries, then the end-to-end tests on a fresh node
.PHONY: node-bin node-tools node-up node-down test-node

NODE_DIR ?= $(CURDIR)/.node
NODE_BINARIES := kubelet kube-scheduler kube-proxy pause
CONTROLPLANE_BIN_DIR := $(CURDIR)/.controlplane/bin

node-bin: controlplane $(CONTROLPLANE_BIN_DIR)/coredns
	tests/controlplane/build.sh $(NODE_BINARIES)

# CoreDNS has its own module (its client-go differs from the control plane's).
$(CONTROLPLANE_BIN_DIR)/coredns: tests/node/coredns/go.mod tests/node/coredns/go.sum tests/node/coredns/main.go
	mkdir -p $(@D)
	cd tests/node/coredns && bash -c 'source ../../go_toolchain.sh && use_go coredns && \
	  $$GO build -p 2 -trimpath -ldflags "-s -w" -o $@ .'

node-tools:
	@if command -v containerd >/dev/null && command -v runc >/dev/null && command -v iptables >/dev/null \
	    && [ -x /usr/lib/cni/bridge ]; then \
	  echo "node-tools: containerd, runc, iptables and the CNI plugins are installed"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    containerd runc iptables containernetworking-plugins; \
	fi

node-up: install node-bin
	NODE_DIR=$(NODE_DIR) IMAGES_DIR=$(IMAGES_DIR) $(BIN)/python -m tests.support.real_node up

node-down: install
	NODE_DIR=$(NODE_DIR) $(BIN)/python -m tests.support.real_node down

test-node: install node-bin images
	NODE_DIR=$(NODE_DIR) IMAGES_DIR=$(IMAGES_DIR) $(BIN)/pytest -m node --durations=0 tests/node
