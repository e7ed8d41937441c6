package main

// Argo CD's "safe" os library (util/lua/oslib_safe.go): only os.time and os.date. The health scripts use
// neither; os.time is here so that the library is open as in Argo CD, and os.date fails loudly rather than
// answering differently from Argo CD's copy of gopher-lua's strftime.

import (
	"time"

	lua "github.com/yuin/gopher-lua"
)

var osFuncs = map[string]lua.LGFunction{
	"time": osTime,
	"date": osDate,
}

func openSafeOs(l *lua.LState) int {
	l.Push(l.RegisterModule(lua.OsLibName, osFuncs))
	return 1
}

func safeOsLoader(l *lua.LState) int {
	l.Push(l.SetFuncs(l.NewTable(), osFuncs))
	return 1
}

func osTime(l *lua.LState) int {
	if l.GetTop() != 0 {
		l.RaiseError("os.time(table) is not implemented by the test runner")
	}
	l.Push(lua.LNumber(time.Now().Unix()))
	return 1
}

func osDate(l *lua.LState) int {
	l.RaiseError("os.date is not implemented by the test runner (Argo CD has it)")
	return 0
}
