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

if [[ -z "${GO:-}" ]]; then
  if command -v go >/dev/null 2>&1; then
    GO=go
  elif [[ -x /usr/local/go/bin/go ]]; then
    GO=/usr/local/go/bin/go
  else
    echo "luarunner: no Go toolchain found (install Go >= 1.26 or set GO=...)" >&2
    exit 1
  fi
fi
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0

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
