package cloudhypervisor

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The fake VMM: the test binary re-executed with MINIONS_FAKE_CH=1 plays
// "cloud-hypervisor --api-socket PATH". It serves the REST API with Cloud
// Hypervisor's state machine (Created, Running, Paused, Shutdown),
// validates every request body (and its own responses) against the OpenAPI
// spec, answers a violation with 400, serves the hybrid vsock socket of the
// VM (CONNECT <port> / OK <n>, then echo), and logs every call as a JSON
// line to MINIONS_FAKE_CH_LOG for the test to inspect.
//
// Behaviour knobs (environment):
//
//	MINIONS_FAKE_CH_POWER  exit (default): the power button makes the VMM exit
//	                       halt: the VM goes to Shutdown, the VMM stays
//	                       ignore: the power button does nothing
//	MINIONS_FAKE_CH_FAIL   an endpoint that answers 500

func TestMain(m *testing.M) {
	if os.Getenv("MINIONS_FAKE_CH") == "1" {
		os.Exit(runFakeVMM(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// fakeCall is one logged API call.
type fakeCall struct {
	Method    string `json:"method"`
	Endpoint  string `json:"endpoint"`
	Body      string `json:"body,omitempty"`
	Status    int    `json:"status"`
	Violation string `json:"violation,omitempty"`
}

type fakeVMM struct {
	api   *openAPI
	mu    sync.Mutex
	state string // "", Created, Running, Paused, Shutdown
	cfg   map[string]any
	logf  *os.File
	vsock net.Listener
	exit  chan int
}

func runFakeVMM(args []string) int {
	var sock string
	for i := 0; i < len(args); i++ {
		if args[i] == "--api-socket" && i+1 < len(args) {
			sock = strings.TrimPrefix(args[i+1], "path=")
			i++
		}
	}
	if sock == "" {
		fmt.Fprintln(os.Stderr, "fake cloud-hypervisor: --api-socket required")
		return 2
	}
	api, err := loadAPIErr()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake cloud-hypervisor:", err)
		return 2
	}
	f := &fakeVMM{api: api, exit: make(chan int, 1)}
	if p := os.Getenv("MINIONS_FAKE_CH_LOG"); p != "" {
		f.logf, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake cloud-hypervisor:", err)
			return 2
		}
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake cloud-hypervisor:", err)
		return 1
	}
	go http.Serve(ln, f)
	code := <-f.exit
	time.Sleep(10 * time.Millisecond) // let the last answer flush
	return code
}

func loadAPIErr() (a *openAPI, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return loadAPI(panicTB{}), nil
}

// panicTB lets loadAPI run outside a test.
type panicTB struct{ testing.TB }

func (panicTB) Helper()                        {}
func (panicTB) Fatalf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }

func (f *fakeVMM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	endpoint := strings.TrimPrefix(r.URL.Path, "/api/v1/")
	body, _ := io.ReadAll(r.Body)
	call := fakeCall{Method: r.Method, Endpoint: endpoint, Body: string(body)}
	reply := func(status int, v any) {
		call.Status = status
		var out []byte
		if v != nil {
			out, _ = json.Marshal(v)
			if err := f.api.ValidateResponse(r.Method, endpoint, status, out); err != nil {
				call.Violation = "response: " + err.Error()
			}
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(status)
		w.Write(out)
		if f.logf != nil {
			b, _ := json.Marshal(call)
			f.logf.Write(append(b, '\n'))
		}
	}
	if err := f.api.ValidateRequest(r.Method, endpoint, body); err != nil {
		call.Violation = err.Error()
		reply(http.StatusBadRequest, nil)
		return
	}
	if endpoint == os.Getenv("MINIONS_FAKE_CH_FAIL") {
		reply(http.StatusInternalServerError, nil)
		return
	}
	var in map[string]any
	_ = json.Unmarshal(body, &in)

	f.mu.Lock()
	defer f.mu.Unlock()
	switch endpoint {
	case "vmm.ping":
		reply(200, map[string]any{"version": "fake-ch v0", "pid": os.Getpid()})
	case "vmm.shutdown":
		reply(204, nil)
		f.exit <- 0
	case "vm.create":
		if f.state != "" {
			reply(http.StatusInternalServerError, nil)
			return
		}
		p, _ := in["payload"].(map[string]any)
		if k, _ := p["kernel"].(string); k == "" || !exists(k) {
			reply(http.StatusInternalServerError, nil)
			return
		}
		f.cfg, f.state = in, "Created"
		reply(204, nil)
	case "vm.boot":
		if f.state != "Created" {
			reply(http.StatusNotFound, nil)
			return
		}
		if err := f.listenVsock(); err != nil {
			reply(http.StatusInternalServerError, nil)
			return
		}
		f.state = "Running"
		reply(204, nil)
	case "vm.info":
		if f.state == "" {
			reply(http.StatusNotFound, nil)
			return
		}
		reply(200, map[string]any{"config": f.cfg, "state": f.state})
	case "vm.pause", "vm.resume":
		from, to := "Running", "Paused"
		if endpoint == "vm.resume" {
			from, to = to, from
		}
		if f.state != from {
			reply(http.StatusMethodNotAllowed, nil)
			return
		}
		f.state = to
		reply(204, nil)
	case "vm.power-button":
		if f.state != "Running" {
			reply(http.StatusMethodNotAllowed, nil)
			return
		}
		reply(204, nil)
		switch os.Getenv("MINIONS_FAKE_CH_POWER") {
		case "ignore":
		case "halt":
			f.state = "Shutdown"
		default:
			f.exit <- 0
		}
	case "vm.shutdown":
		if f.state != "Running" && f.state != "Paused" {
			reply(http.StatusMethodNotAllowed, nil)
			return
		}
		f.state = "Shutdown"
		reply(204, nil)
	case "vm.snapshot":
		if f.state != "Paused" {
			reply(http.StatusMethodNotAllowed, nil)
			return
		}
		dir := strings.TrimPrefix(in["destination_url"].(string), "file://")
		cfg, _ := json.Marshal(f.cfg)
		for name, data := range map[string][]byte{"config.json": cfg, "state.json": []byte("{}"), "memory-ranges": make([]byte, 4096)} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				reply(http.StatusInternalServerError, nil)
				return
			}
		}
		reply(204, nil)
	case "vm.restore":
		dir := strings.TrimPrefix(in["source_url"].(string), "file://")
		b, err := os.ReadFile(filepath.Join(dir, "config.json"))
		var cfg map[string]any
		if f.state != "" || err != nil || json.Unmarshal(b, &cfg) != nil {
			reply(http.StatusInternalServerError, nil)
			return
		}
		f.cfg = cfg
		if err := f.listenVsock(); err != nil {
			reply(http.StatusInternalServerError, nil)
			return
		}
		f.state = "Paused"
		reply(204, nil)
	case "vm.resize":
		cpus := f.cfg["cpus"].(map[string]any)
		mem := f.cfg["memory"].(map[string]any)
		if n, ok := in["desired_vcpus"].(float64); ok {
			if n > cpus["max_vcpus"].(float64) {
				reply(http.StatusBadRequest, nil)
				return
			}
			cpus["boot_vcpus"] = n
		}
		if ram, ok := in["desired_ram"].(float64); ok {
			hp, _ := mem["hotplug_size"].(float64)
			if ram-mem["size"].(float64) > hp {
				reply(http.StatusBadRequest, nil)
				return
			}
			mem["hotplugged_size"] = ram - mem["size"].(float64)
		}
		reply(204, nil)
	case "vm.resize-disk":
		disks, _ := f.cfg["disks"].([]any)
		for _, d := range disks {
			if d.(map[string]any)["id"] == in["id"] {
				reply(204, nil)
				return
			}
		}
		reply(http.StatusNotFound, nil)
	default:
		reply(http.StatusNotFound, nil)
	}
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// listenVsock serves the VM's hybrid vsock socket: the guest "listens" on
// DefaultAgentPort and echoes.
func (f *fakeVMM) listenVsock() error {
	v, _ := f.cfg["vsock"].(map[string]any)
	path, _ := v["socket"].(string)
	if path == "" {
		return nil
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	f.vsock = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(io.LimitReader(c, 32)).ReadString('\n')
				if err != nil || line != fmt.Sprintf("CONNECT %d\n", DefaultAgentPort) {
					return // no listener on that port: the VMM closes
				}
				fmt.Fprintf(c, "OK %d\n", 1<<30)
				io.Copy(c, c)
			}()
		}
	}()
	return nil
}

// readCalls returns the calls the fake VMM logged.
func readCalls(t *testing.T, path string) []fakeCall {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var calls []fakeCall
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var c fakeCall
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			t.Fatalf("bad call log line %q: %v", line, err)
		}
		calls = append(calls, c)
	}
	return calls
}
