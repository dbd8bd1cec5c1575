package store

import (
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// A change stamp of the database without a system call: the route cache
// (service.WebRoutes) and the daemon's periodic loops (DB.ChangeStamp)
// read it to tell that nothing was committed since they last looked.
//
// In WAL mode every SQLite connection, in any process, maps the
// database's wal-index file (<db>-shm) shared, and a commit updates its
// header before the commit returns: iChange counts write transactions,
// mxFrame is the log's last committed frame, and the salts and checksum
// change with every commit and every restart of the log ("WAL-index
// format", sqlite.org/walformat.html; stable since 3.7.0). Mapping the
// header read-only, the stamp is six loads from memory instead of an
// fstat of the log per request (about 2 % of a proxied request's CPU).
//
// The mapping follows the file, not its name. SQLite deletes the -shm file
// only when the last connection to the database closes, which does not
// happen while the daemon holds its own connections; in case it does,
// the link count is checked at most every WALRecheck, and a file with no
// link left is mapped again from its name. That bounds how long a commit
// can go unseen in that case to WALRecheck. Without a -shm file (another
// journal mode, or exclusive locking, which keeps the index in memory)
// there is no stamp: callers fall back (the route cache to the log's
// fstat, the periodic loops to their queries).

// WALRecheck is how often the mapped -shm file's link count is checked:
// the longest a deleted and re-created -shm file goes unseen.
const WALRecheck = 10 * time.Millisecond

// WALIndex is the mapped header of a database's -shm file. Its zero value
// maps nothing until Stamp first asks. Safe for concurrent use.
type WALIndex struct {
	mu      sync.RWMutex
	mem     []byte // nil: not mapped
	fd      int
	checked atomic.Int64 // unix nanos of the last link count check or map attempt
	maps    atomic.Int64 // mappings made (tests)
	kept    []int        // descriptors not closed while their file has a name (see remap)
}

// WALStamp is the wal-index header's words that change with every
// commit: equal stamps of one database, read by Stamp, mean no commit
// between them.
type WALStamp [len(shmWords)]uint32

// Maps returns how many mappings x has made (tests: a deleted -shm file
// is mapped again).
func (x *WALIndex) Maps() int64 { return x.maps.Load() }

// shmPath is the -shm file of the database whose log is wal.
func shmPath(wal string) string { return strings.TrimSuffix(wal, "-wal") + "-shm" }

// Offsets in the wal-index header (its first copy) of the words that
// change with every commit: iChange, mxFrame, aSalt[2], aCksum[2]; and
// of isInit.
var shmWords = [...]uintptr{8, 16, 32, 36, 40, 44}

const shmIsInit = 12

// Stamp reads the mapped header of the database whose write-ahead log is
// wal (<db>-wal), mapping it first if needed; false when there is none to
// read (no -shm file, or not initialized). now is the caller's clock.
func (x *WALIndex) Stamp(wal string, now time.Time) (WALStamp, bool) {
	t := now.UnixNano()
	x.mu.RLock()
	mapped := x.mem != nil
	if mapped {
		live := true
		if t-x.checked.Load() >= int64(WALRecheck) {
			x.checked.Store(t)
			var st syscall.Stat_t
			_, _, e := syscall.RawSyscall(syscall.SYS_FSTAT, uintptr(x.fd), uintptr(unsafe.Pointer(&st)), 0)
			live = e == 0 && st.Nlink > 0
		}
		if live {
			s, ok := readIndex(x.mem)
			x.mu.RUnlock()
			return s, ok
		}
	}
	x.mu.RUnlock()
	// Its file deleted (just found): map the new one; not mapped: try to
	// map it, at most once per WALRecheck while there is none.
	if !mapped && t-x.checked.Load() < int64(WALRecheck) {
		return WALStamp{}, false
	}
	x.remap(shmPath(wal), now)
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.mem == nil {
		return WALStamp{}, false
	}
	return readIndex(x.mem)
}

// readIndex reads the header's changing words; false when the index is
// not initialized.
func readIndex(mem []byte) (WALStamp, bool) {
	var s WALStamp
	p := unsafe.Pointer(&mem[0])
	for i, off := range shmWords {
		s[i] = atomic.LoadUint32((*uint32)(unsafe.Add(p, off)))
	}
	return s, *(*byte)(unsafe.Add(p, shmIsInit)) == 1
}

// remap maps path's header, replacing a mapping of a deleted file; it
// tries at most once per WALRecheck when there is no file to map.
//
// Its descriptor of the file is never closed while the file has a name.
// SQLite holds POSIX record locks on the -shm file through its own
// descriptor (the dead-man switch, read marks, the write lock), and those
// belong to the process and the file: closing any descriptor of the file
// releases all of them. A deleted file is safe to close: SQLite deletes it
// only when no connection uses it any more. So a descriptor is opened
// only for a file that looks mappable, kept with its mapping, and closed
// only once its file has no link left; one whose mapping fails is kept.
func (x *WALIndex) remap(path string, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.checked.Store(now.UnixNano())
	if x.mem != nil {
		var st syscall.Stat_t
		if syscall.Fstat(x.fd, &st) == nil && st.Nlink > 0 {
			return // another request got there first
		}
		x.unmapLocked()
	}
	var st syscall.Stat_t
	// SQLite grows the file in 32 KiB regions; a header needs 136 bytes.
	if syscall.Stat(path, &st) != nil || st.Size < 4096 {
		return
	}
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	mem, err := syscall.Mmap(fd, 0, 4096, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		x.kept = append(x.kept, fd) // not closed: see above
		return
	}
	x.mem, x.fd = mem, fd
	x.maps.Add(1)
}

// unmapLocked drops the mapping; its descriptor is closed only when the
// file has no link left (see remap), else kept.
func (x *WALIndex) unmapLocked() {
	if x.mem == nil {
		return
	}
	_ = syscall.Munmap(x.mem)
	x.mem = nil
	var st syscall.Stat_t
	if syscall.Fstat(x.fd, &st) == nil && st.Nlink == 0 {
		syscall.Close(x.fd)
		return
	}
	x.kept = append(x.kept, x.fd)
}

// Close drops the mapping. Descriptors of files that still have a name
// stay open for the life of the process (see remap).
func (x *WALIndex) Close() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.unmapLocked()
	live := x.kept[:0]
	for _, fd := range x.kept {
		var st syscall.Stat_t
		if syscall.Fstat(fd, &st) == nil && st.Nlink == 0 {
			syscall.Close(fd)
			continue
		}
		live = append(live, fd)
	}
	x.kept = live
}
