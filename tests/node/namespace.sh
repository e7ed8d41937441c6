#!/usr/bin/env bash
# Runs as PID 1 of the real node's own PID, mount and network namespaces, started by
# tests/support/real_node.py as
#   unshare --pid --mount --net --fork --propagation private --mount-proc namespace.sh STATE CONTAINERD_ROOT CMD...
# It makes the paths containerd and the kubelet hard-code private, gives the namespace a node IP, then runs
# CMD (tests/support/node_services.py). When this script exits, the kernel kills every process of the
# namespace and drops its mounts and interfaces: nothing outside changes (real_node.py removes the cgroups
# runc made, the one thing the host keeps).
#
#   STATE            fresh folder for /run, /var/lib, /var/log and the node's files
#   CONTAINERD_ROOT  containerd's image store, kept between runs so that images are imported once
#   NODE_IP          the node's address (default 172.31.0.2)
set -euo pipefail
state="$1" containerd_root="$2"
shift 2

for dir in run var-lib var-log sysctl; do mkdir -p "$state/$dir"; done
mkdir -p "$containerd_root"
mount --bind "$state/run" /run
mount --bind "$state/var-lib" /var/lib
mount --bind "$state/var-log" /var/log
mkdir -p /var/lib/containerd
mount --bind "$containerd_root" /var/lib/containerd

# The kubelet sets these three sysctls unless they already hold its values; they are not per-namespace, so
# each is shadowed by a file that already holds the wanted value (the host's stay as they are).
shadow_sysctl() {
  printf '%s\n' "$2" > "$state/sysctl/${1//\//.}"
  mount --bind "$state/sysctl/${1//\//.}" "/proc/sys/$1"
}
shadow_sysctl vm/overcommit_memory 1
shadow_sysctl kernel/panic 10
shadow_sysctl kernel/panic_on_oops 1

# The node IP on one end of a veth pair (both ends live here: this kernel offers no dummy interfaces), and a
# default route, which the kubelet and kube-proxy need to pick their address.
ip link set lo up
ip link add peft-node type veth peer name peft-peer
ip addr add "${NODE_IP:-172.31.0.2}/24" dev peft-node
ip link set peft-node up
ip link set peft-peer up
ip route add default dev peft-node

# Stay PID 1 (not exec): bash reaps the orphans that containerd's shims leave to PID 1, and a PID 1 ignores
# SIGTERM unless it handles it, so it is passed on to CMD, whose exit ends the namespace.
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
status=0
wait "$child" || status=$?
if kill -0 "$child" 2>/dev/null; then status=0; wait "$child" || status=$?; fi
exit "$status"
