# Argo CD's Lua sandbox for the chart's health-check tests: gopher-lua (the VM Argo CD uses) opened as Argo CD
# opens it, built from tests/argocd/luarunner into .argocd/bin. A no-op when up to date.
.PHONY: luarunner

luarunner:
	tests/argocd/build.sh
