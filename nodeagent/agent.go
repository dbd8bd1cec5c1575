package nodeagent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/tick"
)

// Heartbeat is what a node publishes on fabric.StatusSubject(its id).
// Sizes are MiB.
type Heartbeat struct {
	Version       string    `json:"version"`
	CPUs          int       `json:"cpus"`
	MemoryMiB     int64     `json:"memory_mib"`
	MemoryFreeMiB int64     `json:"memory_free_mib"`
	DiskMiB       int64     `json:"disk_mib"`
	DiskFreeMiB   int64     `json:"disk_free_mib"`
	At            time.Time `json:"at"`
	// Address is the IP address the node reaches the fabric from (the
	// local end of its connection): where the control plane can reach it
	// directly. "" when unknown (an in-process node).
	Address string `json:"address,omitempty"`
	// Caps are the node's capabilities (Capabilities); none from a node
	// older than them.
	Caps []string `json:"caps,omitempty"`
}

// Capacity is what a node has: the fields of Heartbeat it measures.
type Capacity struct {
	CPUs                     int
	MemoryMiB, MemoryFreeMiB int64
	DiskMiB, DiskFreeMiB     int64
}

// Config configures a node agent.
type Config struct {
	ID   string       // the node's host ID (required)
	Conn *fabric.Conn // connected with the node's credential (required)
	// StateDir is the filesystem whose space is reported (required).
	StateDir string
	Version  string
	// Address is reported as where the control plane reaches this node;
	// "" : the address Conn reaches the fabric from (Conn.LocalAddr).
	Address string
	// Interval between heartbeats; default 2 s (the control plane calls a
	// host unreachable after 10 s of silence).
	Interval time.Duration
	// Probe measures the host; default MeasureHost(StateDir). Tests set it.
	Probe func() (Capacity, error)
	Log   *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Interval == 0 {
		c.Interval = 2 * time.Second
	}
	if c.Probe == nil {
		dir := c.StateDir
		c.Probe = func() (Capacity, error) { return MeasureHost(dir) }
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) address() string {
	if c.Address != "" {
		return c.Address
	}
	return c.Conn.LocalAddr()
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if !fabric.ValidID(c.ID) || c.Conn == nil || (c.StateDir == "" && c.Probe == nil) {
		return errs.New(errs.InvalidArgument, "node agent: an id, a connection and a state directory are required")
	}
	if c.Interval < 0 {
		return errs.New(errs.InvalidArgument, "node agent: negative interval")
	}
	return nil
}

// Run heartbeats until ctx ends (then it returns nil) and answers
// fabric.NodeSubject(id)+".ping" with the latest heartbeat. A failed
// measurement or publish is logged and retried at the next beat; the
// connection reconnects by itself.
func Run(ctx context.Context, cfg Config) error {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Log.With("component", "nodeagent", "host_id", cfg.ID)
	var last []byte
	beat := func() {
		c, err := cfg.Probe()
		if err != nil {
			log.Warn("measure host", "err", err)
			return
		}
		b, _ := json.Marshal(Heartbeat{Version: cfg.Version, CPUs: c.CPUs, MemoryMiB: c.MemoryMiB, MemoryFreeMiB: c.MemoryFreeMiB,
			DiskMiB: c.DiskMiB, DiskFreeMiB: c.DiskFreeMiB, At: time.Now().UTC(), Address: cfg.address(), Caps: Capabilities})
		last = b
		if err := cfg.Conn.Publish(fabric.StatusSubject(cfg.ID), b); err != nil {
			log.Warn("heartbeat", "err", err)
		}
	}
	beat()
	pings := make(chan fabric.Msg, 8)
	unsub, err := cfg.Conn.Subscribe(fabric.NodeSubject(cfg.ID)+".ping", func(m fabric.Msg) {
		select {
		case pings <- m:
		default:
		}
	})
	if err != nil {
		return err
	}
	defer unsub()
	log.Info("node agent running", "interval", cfg.Interval.String())
	t := tick.New(cfg.Interval) // with the daemon's other loops (internal/tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			beat()
		case m := <-pings:
			m.Respond(last)
		}
	}
}

// Listen is the control plane's side: it calls fn with each heartbeat and
// the ID of the node that sent it, taken from the subject (the fabric lets
// only that node publish there), one at a time, until stop is called.
// Malformed heartbeats are dropped.
func Listen(conn *fabric.Conn, fn func(id string, hb Heartbeat)) (stop func() error, err error) {
	return conn.Subscribe(fabric.StatusSubjects, func(m fabric.Msg) {
		id := fabric.NodeOfStatus(m.Subject)
		var hb Heartbeat
		if id == "" || json.Unmarshal(m.Data, &hb) != nil {
			return
		}
		fn(id, hb)
	})
}

// ListenBatched is Listen for a store: it keeps the latest heartbeat of
// each node and calls fn with them once per interval (default 1 s; not
// at all when none came), so the control plane writes its store once a
// second however many nodes there are. fn runs on one goroutine, one call
// at a time, and owns the map it gets. stop unsubscribes, delivers what
// is pending and returns once fn has returned for the last time.
func ListenBatched(conn *fabric.Conn, interval time.Duration, fn func(map[string]Heartbeat)) (stop func() error, err error) {
	if interval <= 0 {
		interval = time.Second
	}
	var mu sync.Mutex
	pending := map[string]Heartbeat{}
	unsub, err := Listen(conn, func(id string, hb Heartbeat) {
		mu.Lock()
		pending[id] = hb
		mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	flush := func() {
		mu.Lock()
		b := pending
		if len(b) > 0 {
			pending = map[string]Heartbeat{}
		}
		mu.Unlock()
		if len(b) > 0 {
			fn(b)
		}
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := tick.New(interval)
		defer t.Stop()
		for {
			select {
			case <-quit:
				flush()
				return
			case <-t.C:
				flush()
			}
		}
	}()
	var once sync.Once
	return func() error {
		var err error
		once.Do(func() {
			err = unsub()
			close(quit)
			<-done
		})
		return err
	}, nil
}

// MeasureHost reports this host's vCPUs, memory (/proc/meminfo MemTotal
// and MemAvailable) and the space of the filesystem holding dir.
func MeasureHost(dir string) (Capacity, error) {
	c := Capacity{CPUs: runtime.NumCPU()}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return c, fmt.Errorf("measure memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "MemTotal":
			c.MemoryMiB = n / 1024
		case "MemAvailable":
			c.MemoryFreeMiB = n / 1024
		}
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return c, fmt.Errorf("measure disk %s: %w", dir, err)
	}
	c.DiskMiB = int64(st.Blocks) * st.Bsize >> 20
	c.DiskFreeMiB = int64(st.Bavail) * st.Bsize >> 20
	return c, nil
}
