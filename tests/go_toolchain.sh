# shellcheck shell=bash
# Sourced by the build scripts under tests/ that build Go programs (control plane, Kueue, Lua runner):
# `use_go NAME` sets $GO (as given, else go on PATH, else /usr/local/go/bin/go) or stops with a message
# naming the caller, and pins the toolchain to the local one with cgo off.
use_go() {
  if [[ -z "${GO:-}" ]]; then
    if command -v go >/dev/null 2>&1; then
      GO=go
    elif [[ -x /usr/local/go/bin/go ]]; then
      GO=/usr/local/go/bin/go
    else
      echo "$1: no Go toolchain found (install Go >= 1.26 or set GO=...)" >&2
      exit 1
    fi
  fi
  export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0
}
