#!/usr/bin/env bash
# Builds Kueue (sigs.k8s.io/kueue/cmd/kueue, pinned below) into $REPO/.kueue/bin and copies its CRDs (the
# module's config/components/crd/bases) into $REPO/.kueue/crds, both git-ignored. `go install pkg@version`
# builds it in a module of its own: Kueue pins its own k8s.io libraries (v0.35.x), which must not meet the
# control plane's. A no-op when up to date; the first build takes ~3 min on 2 idle cores (much longer on
# shared ones) and makes an ~87 MB binary.
#
# Environment:
#   KUEUE_DIR  output folder (default $REPO/.kueue)
#   GO         the go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

KUEUE_VERSION=v0.17.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${KUEUE_DIR:-$REPO/.kueue}"

# shellcheck source=../go_toolchain.sh
source "$HERE/../go_toolchain.sh"
use_go kueue

want="$({ "$GO" version; echo "$KUEUE_VERSION"; cat "$HERE/build.sh"; } | sha256sum | cut -d' ' -f1)"
stamp="$OUT/.stamp"
if [[ -x "$OUT/bin/kueue" && -d "$OUT/crds" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
mkdir -p "$OUT/bin"
rm -f "$stamp"
start=$(date +%s)
cd "$OUT"  # outside the repository's Go modules
GOBIN="$OUT/bin" "$GO" install -trimpath -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
module="$("$GO" env GOMODCACHE)/sigs.k8s.io/kueue@$KUEUE_VERSION"
rm -rf "$OUT/crds"
mkdir -p "$OUT/crds"
cp "$module"/config/components/crd/bases/*.yaml "$OUT/crds/"
chmod u+w "$OUT"/crds/*.yaml
echo "$want" > "$stamp"
echo "kueue: built $KUEUE_VERSION into $OUT in $(( $(date +%s) - start ))s"
