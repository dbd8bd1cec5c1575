package vm

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/minionsdev/minions/internal/errs"
)

// State is the state of a VM, as the store records it and the engine
// reports it.
type State string

// States a VM can be in, as the store records them.
const (
	Creating State = "creating"
	Running  State = "running"
	Stopped  State = "stopped"
	Paused   State = "paused"
	Error    State = "error"
)

// Operations checked by Allowed.
const (
	OpStart    = "start"
	OpStop     = "stop"
	OpRestart  = "restart"
	OpExec     = "exec"
	OpDestroy  = "destroy"
	OpResize   = "resize"
	OpSnapshot = "snapshot"
	OpRestore  = "restore"
	OpRename   = "rename"
	OpCopy     = "copy"
)

var allowed = map[string][]State{
	OpStart:    {Stopped, Error},
	OpStop:     {Running, Paused, Error},
	OpRestart:  {Running, Paused, Stopped, Error},
	OpExec:     {Running},
	OpDestroy:  {Running, Paused, Stopped, Error, Creating},
	OpResize:   {Stopped, Running},
	OpSnapshot: {Running, Stopped},
	OpRestore:  {Running, Stopped, Error},
	OpRename:   {Running, Paused, Stopped, Error},
	OpCopy:     {Running, Stopped},
}

// Allowed says whether op may run on a VM named name in state; the error is
// errs.FailedPrecondition with a message a user can act on.
func Allowed(name string, state State, op string) error {
	for _, s := range allowed[op] {
		if s == state {
			return nil
		}
	}
	switch {
	case op == OpStart && (state == Running || state == Paused):
		return errs.New(errs.FailedPrecondition, "vm %s is already %s", name, state)
	case op == OpExec && state == Stopped:
		return errs.New(errs.FailedPrecondition, "vm %s is stopped: start it with `minions start %s`", name, name)
	case state == Creating:
		return errs.New(errs.FailedPrecondition, "vm %s is still being created", name)
	}
	var want []string
	for _, s := range allowed[op] {
		want = append(want, string(s))
	}
	sort.Strings(want)
	return errs.New(errs.FailedPrecondition, "cannot %s vm %s while it is %s (it must be %s)", op, name, state, strings.Join(want, " or "))
}

var nameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$`) })

// ValidName checks a VM (or snapshot) name: a DNS label of 1 to 40
// lowercase letters, digits and inner hyphens, starting with a letter, so it
// can be a host name and a subdomain.
//
// A name that reads as an ID (see IsID) is refused, so that no name can be
// taken for another object's ID.
func ValidName(kind, name string) error {
	if !nameRE().MatchString(name) {
		return errs.New(errs.InvalidArgument, "invalid %s name %q: use 1-40 lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen", kind, name)
	}
	if IsID(name) {
		return errs.New(errs.InvalidArgument, "invalid %s name %q: it reads as an id (12 hex digits); pick a name with a letter after f or a hyphen", kind, name)
	}
	return nil
}

// IsID reports whether s has the form of an ID from NewID: exactly 12
// lowercase hex digits.
func IsID(s string) bool {
	if len(s) != 12 {
		return false
	}
	for _, r := range s {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return false
		}
	}
	return true
}

var snapRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`) })

// ValidSnapshotName checks a snapshot name: 1-63 letters, digits, dots,
// underscores and hyphens, not starting with a punctuation mark.
func ValidSnapshotName(name string) error {
	if !snapRE().MatchString(name) {
		return errs.New(errs.InvalidArgument, "invalid snapshot name %q: use 1-63 letters, digits, '.', '_' and '-', starting with a letter or digit", name)
	}
	return nil
}

// NewID returns a fresh immutable VM ID: 12 lowercase hex characters.
func NewID() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Limits on the resources of one VM.
const (
	MaxCPUs      = 64
	MinMemoryMiB = 128
	MaxMemoryMiB = 256 * 1024
	MaxDiskGiB   = 2048
)

// ValidResources checks CPU, memory and disk figures.
func ValidResources(cpus, memoryMiB, diskGiB int) error {
	if cpus < 1 || cpus > MaxCPUs {
		return errs.New(errs.InvalidArgument, "invalid cpus %d: want 1 to %d", cpus, MaxCPUs)
	}
	if memoryMiB < MinMemoryMiB || memoryMiB > MaxMemoryMiB {
		return errs.New(errs.InvalidArgument, "invalid memory %d MiB: want %d to %d", memoryMiB, MinMemoryMiB, MaxMemoryMiB)
	}
	if diskGiB < 1 || diskGiB > MaxDiskGiB {
		return errs.New(errs.InvalidArgument, "invalid disk %d GiB: want 1 to %d", diskGiB, MaxDiskGiB)
	}
	return nil
}

// BootParams are what the guest needs on its kernel command line.
type BootParams struct {
	ID, Name string
	HostKey  string // base64 of the host's agent key in SSH wire format
	IP       string // a.b.c.d/len
	Gateway  string
	DNS      string
	Extra    string // appended verbatim (e.g. an image's own options)
}

// Cmdline renders the guest kernel command line. The driver appends its own
// options (tsc_early_khz under TCG).
func Cmdline(p BootParams) string {
	parts := []string{
		"console=ttyS0", "root=/dev/vda", "rw", "rootfstype=ext4",
		"panic=-1", "reboot=t", "quiet", "loglevel=4",
		"i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd",
		"minions.id=" + p.ID, "minions.name=" + p.Name,
	}
	if p.HostKey != "" {
		parts = append(parts, "minions.hostkey="+p.HostKey)
	}
	if p.IP != "" {
		parts = append(parts, "minions.ip="+p.IP)
	}
	if p.Gateway != "" {
		parts = append(parts, "minions.gw="+p.Gateway)
	}
	if p.DNS != "" {
		parts = append(parts, "minions.dns="+p.DNS)
	}
	if p.Extra != "" {
		parts = append(parts, p.Extra)
	}
	return strings.Join(parts, " ")
}

// DefaultSnapshotName is a UTC timestamp name for a snapshot.
func DefaultSnapshotName(t interface{ Format(string) string }) string {
	return fmt.Sprint(t.Format("20060102-150405"))
}
