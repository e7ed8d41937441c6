// luarunner runs an Argo CD health script the way Argo CD runs it, so the chart's tests see the sandbox
// users get: gopher-lua with SkipOpenLibs, then only package, base, table and a safe os opened (Argo CD's
// util/lua/lua.go runLuaWithResourceActionParameters; string and math are opened there only when an admin
// sets resource.customizations.useOpenLibs.<group>_<kind>, which -open-libs mimics).
//
//	luarunner [-open-libs] SCRIPT.lua < object.json
//
// prints the health as JSON, {"status": ..., "message": ...}, decoded the way ExecuteHealthLua decodes it
// (layeh gopher-json, then an unknown status becomes Unknown). A Lua error exits 1 with the error on stderr.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
)

// The health codes Argo CD accepts (gitops-engine health.HealthStatusCode); anything else becomes Unknown.
var validStatus = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

const invalidHealthStatus = "Lua returned an invalid health status"

type healthStatus struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}

func main() {
	openLibs := flag.Bool("open-libs", false, "open the full standard library (Argo CD's useOpenLibs)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: luarunner [-open-libs] SCRIPT.lua < object.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fail(err)
	}
	obj, err := readObject()
	if err != nil {
		fail(fmt.Errorf("object on stdin: %w", err))
	}
	result, err := executeHealthLua(obj, string(script), *openLibs)
	if err != nil {
		fail(err)
	}
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// readObject decodes JSON the way Kubernetes' unstructured decoder does: whole numbers become int64 and
// the rest float64 (Argo CD's decodeValue turns a json.Number into a Lua string, which never reaches it).
func readObject() (map[string]any, error) {
	decoder := json.NewDecoder(os.Stdin)
	decoder.UseNumber()
	var raw map[string]any
	if err := decoder.Decode(&raw); err != nil {
		return nil, err
	}
	converted, err := convertNumbers(raw)
	if err != nil {
		return nil, err
	}
	return converted.(map[string]any), nil
}

func convertNumbers(value any) (any, error) {
	switch v := value.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i, nil
		}
		return v.Float64()
	case []any:
		for i := range v {
			item, err := convertNumbers(v[i])
			if err != nil {
				return nil, err
			}
			v[i] = item
		}
	case map[string]any:
		for key, item := range v {
			converted, err := convertNumbers(item)
			if err != nil {
				return nil, err
			}
			v[key] = converted
		}
	}
	return value, nil
}

// executeHealthLua is Argo CD's runLua + ExecuteHealthLua.
func executeHealthLua(obj map[string]any, script string, openLibs bool) (*healthStatus, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	for _, pair := range []struct {
		n string
		f lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(pair.f), NRet: 0, Protect: true}, lua.LString(pair.n)); err != nil {
			return nil, err
		}
	}
	l.PreloadModule(lua.OsLibName, safeOsLoader)
	ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("actionParams", l.CreateTable(0, 0))
	l.SetGlobal("obj", decodeValue(l, obj))
	if err := l.DoString(script); err != nil {
		return nil, err
	}

	returnValue := l.Get(-1)
	switch returnValue.Type() {
	case lua.LTNil:
		return &healthStatus{}, nil
	case lua.LTTable:
	default:
		return nil, fmt.Errorf("expect table output from Lua script, not %s", returnValue.Type().String())
	}
	jsonBytes, err := luajson.Encode(returnValue)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(jsonBytes, []byte("[]")) { // an empty table encodes as an array: Argo CD reads it as empty
		return &healthStatus{}, nil
	}
	result := &healthStatus{}
	if err := json.Unmarshal(jsonBytes, result); err != nil {
		return nil, err
	}
	if !validStatus[result.Status] {
		return &healthStatus{Status: "Unknown", Message: invalidHealthStatus}, nil
	}
	return result, nil
}

// decodeValue is Argo CD's conversion of the object into Lua values.
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch converted := value.(type) {
	case bool:
		return lua.LBool(converted)
	case float64:
		return lua.LNumber(converted)
	case string:
		return lua.LString(converted)
	case json.Number:
		return lua.LString(converted)
	case int64:
		return lua.LNumber(converted)
	case []any:
		arr := l.CreateTable(len(converted), 0)
		for _, item := range converted {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(converted))
		for key, item := range converted {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	}
	return lua.LNil
}
