#!/usr/bin/env bash
# Builds tests/argocd/luarunner (Argo CD's Lua sandbox around gopher-lua, pinned in its go.mod) into
# $REPO/.argocd/bin/luarunner (git-ignored). A no-op when up to date (a stamp records a hash of the
# inputs); the first build downloads two small modules and compiles in ~1 min with empty Go caches (2 cores).
#
# Environment:
#   LUARUNNER_BIN  output folder (default $REPO/.argocd/bin)
#   GO             the go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${LUARUNNER_BIN:-$REPO/.argocd/bin}"

# shellcheck source=../go_toolchain.sh
source "$HERE/../go_toolchain.sh"
use_go luarunner

cd "$HERE/luarunner"
want="$({ "$GO" version; cat go.mod go.sum "$HERE/build.sh" *.go; } | sha256sum | cut -d' ' -f1)"
stamp="$OUT/.stamp"
if [[ -x "$OUT/luarunner" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
mkdir -p "$OUT"
rm -f "$stamp"
start=$(date +%s)
"$GO" build -trimpath -o "$OUT/luarunner" .
echo "$want" > "$stamp"
echo "luarunner: built $OUT/luarunner in $(( $(date +%s) - start ))s"
