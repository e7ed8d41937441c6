#!/usr/bin/env bash
# Builds the real control plane used by the integration tests: kube-apiserver,
# kube-controller-manager, kubectl and etcd, from the Go modules pinned in
# tests/controlplane/go.mod, into $REPO/.controlplane/bin (git-ignored).
# With arguments, builds those commands instead (from cmd/), e.g. the real
# node's kubelet, kube-scheduler and kube-proxy (mk/node.mk).
#
# A no-op when the binaries are up to date (a stamp records a hash of the
# inputs); otherwise `go build` runs and reuses Go's module and build caches,
# so only the first build is slow (see README for the measured time).
#
# Environment:
#   CONTROLPLANE_BIN        output folder (default $REPO/.controlplane/bin)
#   CONTROLPLANE_BUILD_JOBS go build -p (default 2)
#   GO                      the go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${CONTROLPLANE_BIN:-$REPO/.controlplane/bin}"
JOBS="${CONTROLPLANE_BUILD_JOBS:-2}"
if [[ $# -gt 0 ]]; then BINARIES=("$@"); else BINARIES=(kube-apiserver kube-controller-manager kubectl etcd); fi

# shellcheck source=../go_toolchain.sh
source "$HERE/../go_toolchain.sh"
use_go controlplane

cd "$HERE"

# Everything the binaries depend on: the pinned modules, our wrappers, this
# script and the toolchain.
stamp_inputs() {
  "$GO" version
  echo "${BINARIES[*]}"
  cat go.mod go.sum "$HERE/build.sh"
  find cmd -type f -name '*.go' -print0 | LC_ALL=C sort -z | xargs -0 cat
}
want="$(stamp_inputs | sha256sum | cut -d' ' -f1)"
# One stamp per set of commands, so two sets can share an output folder.
stamp="$OUT/.stamp"
[[ $# -eq 0 ]] || stamp="$OUT/.stamp-$(echo "${BINARIES[*]}" | tr ' ' -)"

up_to_date=1
for b in "${BINARIES[@]}"; do
  [[ -x "$OUT/$b" ]] || up_to_date=0
done
if [[ $up_to_date == 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "controlplane: binaries in $OUT are up to date"
  exit 0
fi

# Version information, as upstream's hack/lib/version.sh stamps it, so that
# `kubectl version` and the apiserver's /version report the real release (and
# kubectl's version-skew check compares real versions).
kube_version="$("$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)"   # e.g. v1.37.2
# the release's time, so that the build is reproducible
build_date="$("$GO" list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)"
major="${kube_version#v}"; major="${major%%.*}"
minor="${kube_version#v*.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube_version"
  ldflags+=" -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

mkdir -p "$OUT"
rm -f "$stamp"
echo "controlplane: building ${BINARIES[*]} ($kube_version) into $OUT with go build -p $JOBS"
start=$(date +%s)
pkgs=()
for b in "${BINARIES[@]}"; do pkgs+=("./cmd/$b"); done
"$GO" build -p "$JOBS" -trimpath -ldflags "$ldflags" -o "$OUT/" "${pkgs[@]}"
echo "$want" > "$stamp"
echo "controlplane: built in $(( $(date +%s) - start ))s"
