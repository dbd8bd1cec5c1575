package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

// The web proxy's questions (which VM serves a host name, may a name get a
// certificate, is a one-time link fresh, what key signs cookies, where
// does the proxy listen) are answered here, so the proxy's adapter in the
// daemon never reads the store itself.

// Settings the web proxy keeps in the store: its signing secret and its
// public endpoint (see SetWebEndpoint).
const (
	settingWebSecret   = "proxy_secret"
	settingWebEndpoint = "proxy_endpoint"
)

// WebRoute is what the web proxy needs about the VM behind a host name.
type WebRoute struct {
	VMID   string
	VMName string
	// Owner is the owner's user ID, as the service passes it to LoginLink.
	Owner string
	// Gen is the VM's revocation counter (store.WebGen): links and
	// sessions minted under an older value are void.
	Gen      int64
	Upstream string // ip:port of the VM's web port
	Public   bool
	Running  bool
}

// WebRoutes maps host names to VM routes from the store. Every request and
// TLS handshake asks, so the store's queries are prepared once
// (store.RouteQueries) and the answers are cached only until the next
// commit: a change (share --private, stop, destroy) applies to the very
// next request. The one case the write-ahead log's size and mtime can miss
// (after a checkpoint the log is rewritten from its start, so two commits
// within one tick of the file system's coarse clock leave both unchanged)
// is bounded by RouteCacheTTL: no answer, and so no revoked session,
// outlives it. Safe for concurrent use.
type WebRoutes struct {
	q *store.RouteQueries
	// The lookups are cached until the database changes: any commit, by
	// this or another process, updates the wal-index header in the -shm
	// file, which is mapped (store.WALIndex), so reading it says whether
	// the cache still holds; without a -shm file, a stat of the
	// write-ahead log (which every commit grows or resets) says it.
	wal string
	now func() time.Time
	// The log, held open once it exists, so that a request's stamp is an
	// fstat of it rather than a walk of its path (see currentStamp).
	logMu     sync.RWMutex
	logFD     int
	logOpen   bool
	pathStats atomic.Int64 // stamps taken by path (tests)
	logStats  atomic.Int64 // stamps taken from the log's fstat (tests)
	// The -shm file's header, mapped: a stamp without a system call.
	index  store.WALIndex
	mu     sync.Mutex
	stamp  walStamp
	filled time.Time // when the cache was last emptied
	cache  map[routeKey]routeEntry
}

// RouteCacheTTL is the most a cached route may be behind the store.
const RouteCacheTTL = time.Second

type walStamp struct {
	size  int64
	mtime time.Time
	// index: the wal-index header's changing words, when the stamp comes
	// from the mapped -shm file (then size and mtime are zero).
	index     store.WALStamp
	fromIndex bool
}

// routeKey is a cached lookup: a VM name, or a custom domain. (A struct,
// not a joined string: joining allocated on every request.)
type routeKey struct {
	domain bool
	host   string
}

type routeEntry struct {
	rt  WebRoute
	err error
}

// WebRoutes prepares the route lookups; Close releases them.
func (s *Service) WebRoutes(ctx context.Context) (*WebRoutes, error) {
	q, err := store.PrepareRoutes(ctx, s.DB)
	if err != nil {
		return nil, fmt.Errorf("web routes: %w", err)
	}
	return &WebRoutes{q: q, wal: s.DB.Path + "-wal", now: time.Now, cache: map[routeKey]routeEntry{}}, nil
}

// Close releases the prepared statements and the log.
func (r *WebRoutes) Close() error {
	r.closeLog()
	r.index.Close()
	return r.q.Close()
}

func (r *WebRoutes) closeLog() {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	if r.logOpen {
		syscall.Close(r.logFD)
		r.logOpen = false
	}
}

// ByName is the route of the VM named name (a host <name>.<domain>):
// errs.NotFound if there is none, another error (a 503, not a 404) if the
// store cannot tell.
func (r *WebRoutes) ByName(ctx context.Context, name string) (WebRoute, error) {
	return r.cached(ctx, routeKey{host: name}, name, r.q.ByName)
}

// ByDomain is the route of the VM holding host as a verified custom
// domain; errors as ByName.
func (r *WebRoutes) ByDomain(ctx context.Context, host string) (WebRoute, error) {
	return r.cached(ctx, routeKey{domain: true, host: host}, host, r.q.ByDomain)
}

// AllowCertificate is nil when name is a verified custom domain of some
// VM, errs.PermissionDenied when not: the on-demand TLS decision.
func (r *WebRoutes) AllowCertificate(ctx context.Context, name string) error {
	ok, err := r.q.DomainVerified(ctx, name)
	if err != nil {
		return err
	}
	if !ok {
		return errs.New(errs.PermissionDenied, "no verified custom domain %s", name)
	}
	return nil
}

// currentStamp reads the mapped wal-index header when there is one (no
// system call: store.WALIndex). Without one it stats the write-ahead log
// with raw system calls: an
// ordinary one (os.Stat) enters the Go scheduler's syscall state, which
// wakes the runtime's monitor thread whenever the daemon was idle, as it
// is between the requests to a slow VM. That wake-up and the monitor's
// polling after it were about a fifth of the proxy's CPU per request
// (docs/proxy.md). Once the log exists it is held open and the stamp is
// an fstat of it: a stat by path walked the path on every request (about
// 4 % of the daemon's CPU per request). SQLite writes, truncates and
// resets the log in place and never renames it; when it deletes it (the
// last connection closed) the open file has no link left, and the name
// is looked up again.
func (r *WebRoutes) currentStamp() (walStamp, bool) {
	now := time.Now
	if r.now != nil {
		now = r.now
	}
	if words, ok := r.index.Stamp(r.wal, now()); ok {
		return walStamp{index: words, fromIndex: true}, true
	}
	r.logStats.Add(1)
	r.logMu.RLock()
	if r.logOpen {
		var st syscall.Stat_t
		_, _, e := syscall.RawSyscall(syscall.SYS_FSTAT, uintptr(r.logFD), uintptr(unsafe.Pointer(&st)), 0)
		if e == 0 && st.Nlink > 0 {
			r.logMu.RUnlock()
			return walStamp{size: st.Size, mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec)}, true
		}
	}
	r.logMu.RUnlock()
	stamp, ok := r.pathStamp()
	if ok {
		r.openLog()
	}
	return stamp, ok
}

// openLog opens the log for currentStamp, replacing a deleted one.
func (r *WebRoutes) openLog() {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	if r.logOpen {
		var st syscall.Stat_t
		if syscall.Fstat(r.logFD, &st) == nil && st.Nlink > 0 {
			return // another request got there first
		}
		syscall.Close(r.logFD)
		r.logOpen = false
	}
	fd, err := syscall.Open(r.wal, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	r.logFD, r.logOpen = fd, true
}

// pathStamp stats the log by its name.
func (r *WebRoutes) pathStamp() (walStamp, bool) {
	r.pathStats.Add(1)
	var name [512]byte // r.wal, NUL-terminated, without an allocation
	if len(r.wal) >= len(name) || strings.IndexByte(r.wal, 0) >= 0 {
		fi, err := os.Stat(r.wal)
		if err != nil {
			return walStamp{}, false
		}
		return walStamp{size: fi.Size(), mtime: fi.ModTime()}, true
	}
	copy(name[:], r.wal)
	var st syscall.Stat_t
	_, _, e := syscall.RawSyscall6(syscall.SYS_NEWFSTATAT, atFDCWD, uintptr(unsafe.Pointer(&name[0])),
		uintptr(unsafe.Pointer(&st)), 0, 0, 0)
	if e != 0 {
		return walStamp{}, false
	}
	return walStamp{size: st.Size, mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec)}, true
}

// atFDCWD is AT_FDCWD (-100) as a system call argument: paths are
// relative to the working directory.
const atFDCWD = ^uintptr(99)

func (r *WebRoutes) cached(ctx context.Context, key routeKey, host string, look func(context.Context, string) (store.Route, error)) (WebRoute, error) {
	stamp, ok := r.currentStamp()
	var filled time.Time // the cache generation this lookup may fill
	if ok {
		now := r.now()
		r.mu.Lock()
		if stamp != r.stamp || now.Sub(r.filled) >= RouteCacheTTL || now.Before(r.filled) {
			r.stamp, r.filled, r.cache = stamp, now, map[routeKey]routeEntry{}
		}
		filled = r.filled
		e, hit := r.cache[key]
		r.mu.Unlock()
		if hit {
			return e.rt, e.err
		}
	}
	rt, err := lookupRoute(ctx, host, look)
	if ok && (err == nil || errs.ClassOf(err) == errs.NotFound) {
		r.mu.Lock()
		if r.stamp == stamp && r.filled.Equal(filled) && len(r.cache) < 100000 {
			r.cache[key] = routeEntry{rt, err}
		}
		r.mu.Unlock()
	}
	return rt, err
}

func lookupRoute(ctx context.Context, host string, look func(context.Context, string) (store.Route, error)) (WebRoute, error) {
	sr, err := look(ctx, host)
	if errs.ClassOf(err) == errs.NotFound {
		return WebRoute{}, errs.New(errs.NotFound, "no vm serves %s", host)
	}
	if err != nil {
		return WebRoute{}, fmt.Errorf("route %s: %w", host, err)
	}
	return WebRoute{VMID: sr.VMID, VMName: sr.VMName, Owner: sr.OwnerID, Gen: sr.WebGen,
		Upstream: net.JoinHostPort(sr.IP, strconv.Itoa(sr.Port)), Public: sr.Public, Running: sr.State == store.StateRunning}, nil
}

// WebSecret is the proxy's signing key of size bytes, created once and
// kept in the store so sign-in cookies survive restarts.
func (s *Service) WebSecret(ctx context.Context, size int) ([]byte, error) {
	var secret []byte
	err := s.DB.Tx(ctx, func(q store.Q) error {
		v, err := store.Setting(ctx, q, settingWebSecret)
		if err != nil {
			return err
		}
		if v != "" {
			secret, err = hex.DecodeString(v)
			return err
		}
		secret = make([]byte, size)
		if _, err := rand.Read(secret); err != nil {
			return err
		}
		return store.SetSetting(ctx, q, settingWebSecret, hex.EncodeToString(secret))
	})
	return secret, err
}

// UseLink records the one-time link id as used until exp and reports
// whether it was fresh. The ledger is the store, so a link used before a
// daemon restart stays used after it.
func (s *Service) UseLink(ctx context.Context, id string, exp time.Time) (bool, error) {
	return store.UseLink(ctx, s.DB, id, exp, time.Now())
}

// SetWebEndpoint records where the serving proxy listens (an opaque
// document of the daemon's; "" none runs), so link minters in other
// processes make links it accepts.
func (s *Service) SetWebEndpoint(ctx context.Context, doc string) error {
	return s.DB.Tx(ctx, func(q store.Q) error { return store.SetSetting(ctx, q, settingWebEndpoint, doc) })
}

// WebEndpoint is what SetWebEndpoint recorded last ("" nothing).
func (s *Service) WebEndpoint(ctx context.Context) (string, error) {
	return store.Setting(ctx, s.DB, settingWebEndpoint)
}
