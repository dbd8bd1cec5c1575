//go:build linux

package kvm

import (
	"context"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Guest programs, assembled from guest/*.S (see guest_test.go).
var (
	//go:embed guest/real16.bin
	guestReal16 []byte
	//go:embed guest/long64.bin
	guestLong64 []byte
	//go:embed guest/kernel64.bin
	guestKernel64 []byte
)

// ioctl numbers from <linux/kvm.h> (x86-64).
const (
	kvmGetAPIVersion       = 0xAE00
	kvmCreateVM            = 0xAE01
	kvmGetVCPUMmapSize     = 0xAE04
	kvmCreateVCPU          = 0xAE41
	kvmSetUserMemoryRegion = 0x4020AE46
	kvmSetTSSAddr          = 0xAE47
	kvmRun                 = 0xAE80
	kvmGetRegs             = 0x8090AE81
	kvmSetRegs             = 0x4090AE82
	kvmGetSregs            = 0x8138AE83
	kvmSetSregs            = 0x4138AE84
	kvmGetSupportedCPUID   = 0xC008AE05
	kvmSetCPUID2           = 0x4008AE90

	kvmAPIVersion = 12
)

// Exit reasons (kvm_run.exit_reason).
const (
	exitUnknown       = 0
	exitException     = 1
	exitIO            = 2
	exitHLT           = 5
	exitMMIO          = 6
	exitShutdown      = 8
	exitFailEntry     = 9
	exitInternalError = 17
)

var exitNames = map[uint32]string{
	exitUnknown: "UNKNOWN", exitException: "EXCEPTION", exitIO: "IO", exitHLT: "HLT",
	exitMMIO: "MMIO", exitShutdown: "SHUTDOWN (triple fault)", exitFailEntry: "FAIL_ENTRY",
	exitInternalError: "INTERNAL_ERROR",
}

var internalSuberrors = map[uint32]string{
	1: "emulation failure", 2: "simultaneous exceptions", 3: "delivery event failure",
	4: "unexpected exit reason",
}

type memRegion struct {
	Slot, Flags                           uint32
	GuestPhysAddr, MemorySize, UserspaceA uint64
}

type regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

type segment struct {
	Base                                     uint64
	Limit                                    uint32
	Selector                                 uint16
	Type, Present, DPL, DB, S, L, G, AVL, Un uint8
	_                                        uint8
}

type dtable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

type sregs struct {
	CS, DS, ES, FS, GS, SS, TR, LDT segment
	GDT, IDT                        dtable
	CR0, CR2, CR3, CR4, CR8         uint64
	EFER, APICBase                  uint64
	InterruptBitmap                 [4]uint64
}

// Compile-time checks of the C layouts.
var (
	_ [32]byte  = [unsafe.Sizeof(memRegion{})]byte{}
	_ [144]byte = [unsafe.Sizeof(regs{})]byte{}
	_ [312]byte = [unsafe.Sizeof(sregs{})]byte{}
)

// ioctl issues an ioctl with an integer argument.
func ioctl(fd int, req uintptr, arg uintptr) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if e != 0 {
		return r, e
	}
	return r, nil
}

// ioctlPtr issues an ioctl whose argument is a pointer. The conversion to
// uintptr must happen in the Syscall call expression itself, so that the
// pointee is kept alive and not moved by a stack copy meanwhile.
func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return r, e
	}
	return r, nil
}

const maxCPUIDEntries = 256

// Guest memory layout (guest physical = guest virtual where paging is on).
const (
	memSize    = 2 << 20
	addrGDT    = 0x500
	addrGDTR   = 0x580
	addrIDTR   = 0x590
	addrIDT    = 0x600
	addrCode   = 0x1000
	addrPML4   = 0x2000
	addrPDPT   = 0x3000
	addrPD     = 0x4000
	addrStack  = 0x7000
	addrData   = 0x8000
	stubsAddr  = addrCode + 0x800
	pfAddr     = 0x400000 // outside the single 2 MiB mapping
	portOut    = 0x10
	portVector = 0x12
)

// Probe opens the KVM device and runs the probe stages. It never returns an
// error: everything it learns, including why it stopped, is in the Result.
// It takes a few milliseconds where KVM works. ctx bounds each guest run.
func Probe(ctx context.Context, opts Options) Result {
	opts = opts.withDefaults()
	start := time.Now()
	var res Result
	if _, err := os.Stat(opts.Device); err == nil {
		res.DevicePresent = true
	} else {
		res.Reason = fmt.Sprintf("%s: %v", opts.Device, err)
		res.Duration = time.Since(start)
		return res
	}

	t := time.Now()
	fd, err := unix.Open(opts.Device, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		res.Stages = append(res.Stages, StageResult{Name: StageOpen, Detail: fmt.Sprintf("open %s: %v", opts.Device, err), Duration: time.Since(t)})
		res.finish(start)
		return res
	}
	defer unix.Close(fd)
	v, err := ioctl(fd, kvmGetAPIVersion, 0)
	if err != nil || v != kvmAPIVersion {
		res.Stages = append(res.Stages, StageResult{Name: StageOpen, Detail: fmt.Sprintf("KVM_GET_API_VERSION = %d, %v (want %d)", v, err, kvmAPIVersion), Duration: time.Since(t)})
		res.finish(start)
		return res
	}
	res.APIVersion = int(v)
	res.Stages = append(res.Stages, StageResult{Name: StageOpen, OK: true, Detail: fmt.Sprintf("api version %d", v), Duration: time.Since(t)})

	for _, st := range []struct {
		name string
		run  func(ctx context.Context, m *machine) (string, error)
	}{
		{StageReal, runReal},
		{StageLong, runLong},
		{StageKernel, func(ctx context.Context, m *machine) (string, error) {
			return runKernel(ctx, m, opts.MaxPrivilegedTime)
		}},
	} {
		t := time.Now()
		detail, err := withMachine(ctx, fd, func(m *machine) (string, error) { return st.run(ctx, m) })
		sr := StageResult{Name: st.name, OK: err == nil, Detail: detail, Duration: time.Since(t)}
		if err != nil {
			sr.Detail = err.Error()
		}
		res.Stages = append(res.Stages, sr)
		if err != nil {
			break
		}
	}
	res.finish(start)
	return res
}

// machine is one VM with one vCPU and memSize bytes of RAM at address 0.
type machine struct {
	vm, vcpu int
	mem      []byte
	run      []byte // the vCPU's shared kvm_run page(s)
}

func withMachine(ctx context.Context, kvmFD int, f func(*machine) (string, error)) (string, error) {
	m := &machine{vm: -1, vcpu: -1}
	defer m.close()
	vm, err := ioctl(kvmFD, kvmCreateVM, 0)
	if err != nil {
		return "", fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	m.vm = int(vm)
	// Intel without unrestricted guest needs a TSS for real mode; harmless elsewhere.
	if _, err := ioctl(m.vm, kvmSetTSSAddr, 0xfffbd000); err != nil {
		return "", fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
	}
	m.mem, err = unix.Mmap(-1, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return "", fmt.Errorf("mmap guest memory: %w", err)
	}
	region := memRegion{MemorySize: memSize, UserspaceA: uint64(uintptr(unsafe.Pointer(&m.mem[0])))}
	if _, err := ioctlPtr(m.vm, kvmSetUserMemoryRegion, unsafe.Pointer(&region)); err != nil {
		return "", fmt.Errorf("KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	vcpu, err := ioctl(m.vm, kvmCreateVCPU, 0)
	if err != nil {
		return "", fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	m.vcpu = int(vcpu)
	size, err := ioctl(kvmFD, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return "", fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	m.run, err = unix.Mmap(m.vcpu, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return "", fmt.Errorf("mmap kvm_run: %w", err)
	}
	// Give the vCPU the CPUID KVM supports, as every VMM does; without it
	// the guest has no long-mode features and MSR writes fault.
	cpuid := make([]byte, 8+maxCPUIDEntries*40)
	binary.LittleEndian.PutUint32(cpuid, maxCPUIDEntries)
	if _, err := ioctlPtr(kvmFD, kvmGetSupportedCPUID, unsafe.Pointer(&cpuid[0])); err != nil {
		return "", fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	if _, err := ioctlPtr(m.vcpu, kvmSetCPUID2, unsafe.Pointer(&cpuid[0])); err != nil {
		return "", fmt.Errorf("KVM_SET_CPUID2: %w", err)
	}
	return f(m)
}

func (m *machine) close() {
	if m.run != nil {
		_ = unix.Munmap(m.run)
	}
	if m.vcpu >= 0 {
		_ = unix.Close(m.vcpu)
	}
	if m.vm >= 0 {
		_ = unix.Close(m.vm)
	}
	if m.mem != nil {
		_ = unix.Munmap(m.mem)
	}
}

func (m *machine) getSregs() (sregs, error) {
	var s sregs
	_, err := ioctlPtr(m.vcpu, kvmGetSregs, unsafe.Pointer(&s))
	if err != nil {
		return s, fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	return s, nil
}

func (m *machine) setSregs(s *sregs) error {
	if _, err := ioctlPtr(m.vcpu, kvmSetSregs, unsafe.Pointer(s)); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	return nil
}

func (m *machine) setRegs(r *regs) error {
	if _, err := ioctlPtr(m.vcpu, kvmSetRegs, unsafe.Pointer(r)); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

func (m *machine) getRegs() (regs, error) {
	var r regs
	if _, err := ioctlPtr(m.vcpu, kvmGetRegs, unsafe.Pointer(&r)); err != nil {
		return r, fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	return r, nil
}

// exit is one KVM_RUN outcome.
type exit struct {
	reason uint32
	// For exitIO: direction (1 = out), size, port and the data.
	out   bool
	size  int
	port  uint16
	value uint32
	// For exitInternalError / exitFailEntry.
	suberror uint32
	data     []uint64
}

func (e exit) String() string {
	name := exitNames[e.reason]
	if name == "" {
		name = fmt.Sprintf("exit reason %d", e.reason)
	}
	switch e.reason {
	case exitIO:
		dir := "in"
		if e.out {
			dir = "out"
		}
		return fmt.Sprintf("IO %s port %#x size %d value %#x", dir, e.port, e.size, e.value)
	case exitInternalError:
		sub := internalSuberrors[e.suberror]
		if sub == "" {
			sub = fmt.Sprintf("suberror %d", e.suberror)
		}
		if insn := e.insnBytes(); insn != nil {
			return fmt.Sprintf("KVM internal error: %s on %s (% x)", sub, describeInsn(insn), insn)
		}
		return fmt.Sprintf("KVM internal error: %s (data %#x)", sub, e.data)
	case exitFailEntry:
		return fmt.Sprintf("FAIL_ENTRY (hardware_entry_failure_reason %#x)", e.suberror)
	}
	return name
}

// insnBytes returns the instruction bytes KVM attaches to an emulation
// failure (struct kvm_run.emulation_failure: flags, then insn_size and up
// to 15 bytes), or nil.
func (e exit) insnBytes() []byte {
	if e.reason != exitInternalError || e.suberror != 1 || len(e.data) < 3 || e.data[0]&1 == 0 {
		return nil
	}
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], e.data[1])
	binary.LittleEndian.PutUint64(b[8:], e.data[2])
	n := int(b[0])
	if n == 0 || n > 15 {
		return nil
	}
	return append([]byte(nil), b[1:1+n]...)
}

// describeInsn names the few instructions worth naming in a probe failure.
func describeInsn(b []byte) string {
	i := 0
	lock := false
	for i < len(b) && (b[i] == 0xf0 || b[i] == 0x66 || b[i] == 0xf2 || b[i] == 0xf3) {
		lock = lock || b[i] == 0xf0
		i++
	}
	rexW := false
	if i < len(b) && b[i]&0xf0 == 0x40 {
		rexW = b[i]&8 != 0
		i++
	}
	if i+2 < len(b) && b[i] == 0x0f && b[i+1] == 0xc7 && (b[i+2]>>3)&7 == 1 {
		name := "cmpxchg8b"
		if rexW {
			name = "cmpxchg16b"
		}
		if lock {
			name = "lock " + name
		}
		return name
	}
	return "an instruction"
}

// runOnce runs the vCPU until the next exit to user space. A watchdog
// interrupts it when ctx ends (KVM_RUN returns EINTR; the run is then
// reported as an error).
func (m *machine) runOnce(ctx context.Context) (exit, error) {
	if err := ctx.Err(); err != nil {
		return exit{}, err
	}
	runtime.LockOSThread() // the watchdog signals this thread
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	stop := context.AfterFunc(ctx, func() { _ = unix.Tgkill(unix.Getpid(), tid, unix.SIGURG) })
	defer stop()
	for {
		_, err := ioctl(m.vcpu, kvmRun, 0)
		if errors.Is(err, unix.EINTR) {
			if ctx.Err() != nil {
				r, _ := m.getRegs()
				return exit{}, fmt.Errorf("KVM_RUN: guest still running at rip %#x when %w", r.RIP, ctx.Err())
			}
			continue
		}
		if err != nil {
			return exit{}, fmt.Errorf("KVM_RUN: %w", err)
		}
		break
	}
	le := binary.LittleEndian
	e := exit{reason: le.Uint32(m.run[8:])}
	switch e.reason {
	case exitIO:
		e.out = m.run[32] == 1
		e.size = int(m.run[33])
		e.port = le.Uint16(m.run[34:])
		off := le.Uint64(m.run[40:])
		if off+4 <= uint64(len(m.run)) {
			switch e.size {
			case 1:
				e.value = uint32(m.run[off])
			case 2:
				e.value = uint32(le.Uint16(m.run[off:]))
			case 4:
				e.value = le.Uint32(m.run[off:])
			}
		}
	case exitInternalError:
		e.suberror = le.Uint32(m.run[32:])
		n := le.Uint32(m.run[36:])
		for i := uint32(0); i < n && i < 16; i++ {
			e.data = append(e.data, le.Uint64(m.run[40+8*i:]))
		}
	case exitFailEntry:
		e.suberror = uint32(le.Uint64(m.run[32:]))
	}
	return e, nil
}

// expect runs the vCPU through the given sequence of expected exits.
func (m *machine) expect(ctx context.Context, want ...exit) error {
	for i, w := range want {
		got, err := m.runOnce(ctx)
		if err != nil {
			return err
		}
		ok := got.reason == w.reason
		if ok && w.reason == exitIO {
			ok = got.out == w.out && got.port == w.port && got.size == w.size && got.value == w.value
		}
		if !ok {
			regs, _ := m.getRegs()
			return fmt.Errorf("exit %d: got %s at rip %#x, want %s", i+1, got, regs.RIP, w)
		}
	}
	return nil
}

func runReal(ctx context.Context, m *machine) (string, error) {
	copy(m.mem[addrCode:], guestReal16)
	s, err := m.getSregs()
	if err != nil {
		return "", err
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if err := m.setSregs(&s); err != nil {
		return "", err
	}
	if err := m.setRegs(&regs{RIP: addrCode, RFLAGS: 2}); err != nil {
		return "", err
	}
	// sum 1..100 = 5050 written to port 0x10 as a word, then hlt.
	if err := m.expect(ctx, exit{reason: exitIO, out: true, port: portOut, size: 2, value: 5050}, exit{reason: exitHLT}); err != nil {
		return "", err
	}
	return "sum 1..100 = 5050 written to port 0x10, hlt", nil
}

// setupLongMode builds identity-mapped 4-level page tables for the first
// 2 MiB, a GDT and (when stubs is not 0) an IDT whose 32 exception vectors
// point to 16-byte stubs from address stubs on, and puts the vCPU in 64-bit
// mode at addrCode.
func (m *machine) setupLongMode(stubs uint64) error {
	le := binary.LittleEndian
	const present, rw, ps = 1, 2, 0x80
	le.PutUint64(m.mem[addrPML4:], addrPDPT|present|rw)
	le.PutUint64(m.mem[addrPDPT:], addrPD|present|rw)
	le.PutUint64(m.mem[addrPD:], 0|present|rw|ps)

	// GDT: null, 64-bit code (0x08), data (0x10).
	le.PutUint64(m.mem[addrGDT:], 0)
	le.PutUint64(m.mem[addrGDT+8:], 0x00af9a000000ffff)
	le.PutUint64(m.mem[addrGDT+16:], 0x00cf92000000ffff)
	le.PutUint16(m.mem[addrGDTR:], 3*8-1)
	le.PutUint64(m.mem[addrGDTR+2:], addrGDT)
	if stubs != 0 {
		// 32 interrupt gates, vector v -> stubs + 16*v.
		for v := uint64(0); v < 32; v++ {
			h := stubs + 16*v
			e := m.mem[addrIDT+16*v:]
			le.PutUint16(e[0:], uint16(h))
			le.PutUint16(e[2:], 0x08)
			e[4] = 0
			e[5] = 0x8e // present, DPL 0, 64-bit interrupt gate
			le.PutUint16(e[6:], uint16(h>>16))
			le.PutUint32(e[8:], uint32(h>>32))
		}
		le.PutUint16(m.mem[addrIDTR:], 32*16-1)
		le.PutUint64(m.mem[addrIDTR+2:], addrIDT)
	}

	s, err := m.getSregs()
	if err != nil {
		return err
	}
	code := segment{Base: 0, Limit: 0xffffffff, Selector: 0x08, Type: 11, Present: 1, S: 1, L: 1, G: 1}
	data := segment{Base: 0, Limit: 0xffffffff, Selector: 0x10, Type: 3, Present: 1, S: 1, DB: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.GDT = dtable{Base: addrGDT, Limit: 3*8 - 1}
	s.CR3 = addrPML4
	s.CR4 = 1 << 5                              // PAE
	s.CR0 = 1 | 2 | 1<<4 | 1<<5 | 1<<16 | 1<<31 // PE MP ET NE WP PG
	s.EFER = 1<<8 | 1<<10                       // LME LMA
	if err := m.setSregs(&s); err != nil {
		return err
	}
	return m.setRegs(&regs{RIP: addrCode, RSP: addrStack, RFLAGS: 2})
}

func runLong(ctx context.Context, m *machine) (string, error) {
	copy(m.mem[addrCode:], guestLong64)
	if err := m.setupLongMode(0); err != nil {
		return "", err
	}
	if err := m.expect(ctx, exit{reason: exitIO, out: true, port: portOut, size: 4, value: 5050}, exit{reason: exitHLT}); err != nil {
		return "", err
	}
	r, err := m.getRegs()
	if err != nil {
		return "", err
	}
	const want = 0x1_0000_0000 + 5050
	if r.RAX != want {
		return "", fmt.Errorf("rax = %#x after the run, want %#x", r.RAX, want)
	}
	if got := binary.LittleEndian.Uint64(m.mem[addrData:]); got != want {
		return "", fmt.Errorf("guest store through paging wrote %#x, want %#x", got, want)
	}
	return "64-bit arithmetic, paged store and port write checked", nil
}

var exceptionNames = [32]string{0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
	8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM"}

// kernelSteps says what the kernel stage was doing, by the number of port
// writes seen so far.
var kernelSteps = []string{
	0: "while loading descriptor tables, in cpuid or in the IA32_KERNEL_GS_BASE round trip",
	2: "in swapgs, the cr3 switch loop or the cmpxchg16b on a live page directory",
	4: "while taking a page fault through the guest's IDT",
	5: "after the exception report",
}

func runKernel(ctx context.Context, m *machine, limit time.Duration) (string, error) {
	copy(m.mem[addrCode:], guestKernel64)
	if err := m.setupLongMode(stubsAddr); err != nil {
		return "", err
	}
	t := time.Now()
	var outs []exit
	for {
		e, err := m.runOnce(ctx)
		if err != nil {
			return "", err
		}
		if e.reason == exitHLT {
			break
		}
		if e.reason != exitIO || !e.out || len(outs) == 8 {
			r, _ := m.getRegs()
			if e.insnBytes() != nil { // the instruction says it all
				return "", fmt.Errorf("got %s at rip %#x", e, r.RIP)
			}
			what := kernelSteps[min(len(outs), len(kernelSteps)-1)]
			return "", fmt.Errorf("got %s at rip %#x (%s)", e, r.RIP, what)
		}
		outs = append(outs, e)
	}
	took := time.Since(t)
	port := func(i int, p uint16) (uint32, bool) {
		if i < len(outs) && outs[i].port == p {
			return outs[i].value, true
		}
		return 0, false
	}
	lo, ok1 := port(0, portOut)
	hi, ok2 := port(1, portOut)
	if ok1 && ok2 && (lo != 0x12345678 || hi != 0xffff8880) {
		return "", fmt.Errorf("IA32_KERNEL_GS_BASE read back as %#x, want 0xffff888012345678", uint64(hi)<<32|uint64(lo))
	}
	c1, ok3 := port(2, portOut)
	c2, ok4 := port(3, portOut)
	if ok3 && ok4 && (c1 != 0x5a5a5a5a || c2 != 0x2468ace0) {
		return "", fmt.Errorf("cmpxchg16b on the page directory stored %#x/%#x, want 0x5a5a5a5a/0x2468ace0", c1, c2)
	}
	// The exception report is the last three writes.
	if n := len(outs); n >= 3 && outs[n-3].port == portVector {
		vec, rip, cr2 := outs[n-3].value, outs[n-2].value, outs[n-1].value
		if vec != 14 || cr2 != pfAddr || !ok1 || !ok2 || !ok3 || !ok4 {
			name := ""
			if vec < 32 {
				name = exceptionNames[vec]
			}
			return "", fmt.Errorf("guest took exception %d %s at rip %#x (cr2 %#x) after %d of the expected port writes", vec, name, rip, cr2, n-3)
		}
	} else {
		return "", fmt.Errorf("guest halted after port writes %v without the expected page fault", outs)
	}
	if n := binary.LittleEndian.Uint64(m.mem[addrData:]); n != 1000 {
		return "", fmt.Errorf("address-space switch loop counted %d, want 1000", n)
	}
	if took > limit {
		return "", fmt.Errorf("privileged code ran correctly but took %s (limit %s): far too slow to boot a kernel", took.Round(time.Microsecond), limit)
	}
	return fmt.Sprintf("descriptor tables, cpuid, msr, 1000 cr3 switches, cmpxchg16b on a page table and a guest page fault in %s", took.Round(time.Microsecond)), nil
}
