package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

// A live move onto the host whose store also holds the control plane's
// row of the instance (the control plane's own host: the row says the
// VM is on its source node until the switch), as StageBundle and
// AdoptBundle do for a move with memory:
//
//  1. StageIncoming is PrepareIncoming without a record: the disk, an
//     address and TAP of this host and the hypervisor waiting paused; what
//     the record would hold is kept in the instance's directory
//     (incomingFile). DialIncoming and AbortIncoming (Destroy) work on it.
//  2. AdoptIncoming makes the row this host's, still creating, with that
//     address and the waiting hypervisor's handle, inside the caller's
//     transaction (the switch).
//  3. FinishIncoming resumes it as for a recorded one.
//
// No operation row is kept for a staged instance: the caller's move
// record says what a crash leaves (before the switch the staged copy is
// removed, Destroy; after it FinishIncoming is tried again). A staged
// instance must pass the admission a start does (the host's memory: the
// user's quota already counts the VM), and its address, vsock CID and
// memory are reserved in the store (store.ReserveAddress) in the same
// transaction, so nothing else takes them; AdoptIncoming turns the
// reservation into the row's in the switch's transaction, and every way
// a staged copy goes (a failed StageIncoming, AbortIncoming, Destroy)
// releases it.

// incomingFile keeps a staged incoming instance's record until it is
// adopted.
const incomingFile = "incoming.json"

// stagedIn is what incomingFile holds.
type stagedIn struct {
	Name     string `json:"name"`
	IP       string `json:"ip"`
	MAC      string `json:"mac"`
	CID      uint32 `json:"cid"`
	Handle   string `json:"handle"`
	AgentKey string `json:"agent_key"`
}

func (l *Local) stagedIncoming(id string) (stagedIn, error) {
	var st stagedIn
	if !vm.IsID(id) {
		return st, errs.New(errs.InvalidArgument, "invalid vm id %q", id)
	}
	b, err := os.ReadFile(filepath.Join(l.vmDir(id), incomingFile))
	if err != nil {
		return st, errs.New(errs.NotFound, "no staged incoming vm %s", id)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("staged incoming vm %s: %w", id, err)
	}
	return st, nil
}

// StageIncoming prepares instance spec.ID for a live migration in (see
// above) without recording it. An instance of this host with that ID, or
// files of it already here, is errs.AlreadyExists; on any failure what it
// made is removed.
func (l *Local) StageIncoming(ctx context.Context, spec IncomingSpec, progress Progress) (Instance, error) {
	lm, src, err := l.checkIncoming(spec)
	if err != nil {
		return Instance{}, err
	}
	if err := l.checkFreeSpace("live move of vm "+spec.Name, ReserveBytes); err != nil {
		return Instance{}, err
	}
	progress.Say("image")
	img, err := l.Images.Resolve(ctx, spec.Image)
	if err != nil {
		return Instance{}, errs.New(errs.FailedPrecondition, "live move of vm %s: image %s is not on this host: %v", spec.Name, spec.Image, err)
	}
	unlock, err := l.lockVM(ctx, spec.ID)
	if err != nil {
		return Instance{}, err
	}
	defer unlock()
	if _, err := store.GetLocalVMByID(ctx, l.DB, spec.ID); err == nil {
		return Instance{}, errs.New(errs.AlreadyExists, "vm %s is already on this host", spec.ID)
	}
	dir := l.vmDir(spec.ID)
	if exists(dir) {
		return Instance{}, errs.New(errs.AlreadyExists, "live move of vm %s: files of it are already on this host", spec.Name)
	}
	var u undo
	defer u.run()
	ip, mac, cid, err := l.reserveIncoming(ctx, spec)
	if err != nil {
		return Instance{}, fmt.Errorf("live move of vm %s: %w", spec.Name, err)
	}
	u.push(func() { store.ReleaseAddress(context.WithoutCancel(ctx), l.DB, spec.ID) })
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return Instance{}, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if os.IsExist(err) {
			return Instance{}, errs.New(errs.AlreadyExists, "live move of vm %s: files of it are already on this host", spec.Name)
		}
		return Instance{}, err
	}
	u.push(func() { os.RemoveAll(dir) })
	port := spec.Port
	if port == 0 {
		port = 80
	}
	row := store.VM{ID: spec.ID, Name: spec.Name, OwnerID: spec.Owner, Image: img.Ref, CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
		DiskGiB: spec.DiskGiB, Port: port, AgentKey: src.AgentKey, IP: ip.String(), MAC: mac, CID: cid, State: vm.Creating}
	progress.Say("disk")
	if err := l.Disks.CreateOverlay(ctx, img.Path, img.Format, l.diskPath(row.ID), int64(row.DiskGiB)<<30); err != nil {
		return Instance{}, fmt.Errorf("live move of vm %s: disk: %w", spec.Name, l.diskFull(err))
	}
	aip, run, err := l.attach(ctx, nil, &u, row, progress, "wait for the migration")
	if err != nil {
		return Instance{}, fmt.Errorf("live move of vm %s: %w", spec.Name, err)
	}
	h, err := lm.StartIncoming(ctx, l.spec(row, img, run, aip), src.Machine)
	if err != nil {
		return Instance{}, fmt.Errorf("live move of vm %s: %w", spec.Name, err)
	}
	u.push(func() { l.Driver.Kill(context.Background(), h) })
	u.push(func() { killByRunDir(run) })
	row.Handle = EncodeHandle(h)
	b, err := json.Marshal(stagedIn{Name: row.Name, IP: row.IP, MAC: row.MAC, CID: row.CID, Handle: row.Handle, AgentKey: row.AgentKey})
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, incomingFile), b, 0o600)
	}
	if err != nil {
		return Instance{}, fmt.Errorf("live move of vm %s: %w", spec.Name, err)
	}
	u = nil
	return InstanceOf(row), nil
}

// reserveIncoming admits a staged incoming instance (as a start: this
// host's memory) and reserves an address, vsock CID and its memory for
// it, in one transaction.
func (l *Local) reserveIncoming(ctx context.Context, spec IncomingSpec) (ip netip.Addr, mac string, cid uint32, err error) {
	err = l.DB.Tx(ctx, func(q store.Q) error {
		res := Resources{CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB, DiskGiB: spec.DiskGiB}
		if err := l.admitOK(ctx, q, Admission{Kind: AdmitStart, ID: spec.ID, Name: spec.Name, Owner: spec.Owner, Was: res, Want: res}); err != nil {
			return err
		}
		var err error
		if ip, mac, cid, err = l.allocate(ctx, q, spec.ID); err != nil {
			return err
		}
		return store.ReserveAddress(ctx, q, store.Reservation{VMID: spec.ID, IP: ip.String(), CID: cid, MemoryMiB: spec.MemoryMiB, CreatedAt: time.Now().UTC()})
	})
	return ip, mac, cid, err
}

// AdoptIncoming makes row id of this store, recorded as another host's,
// this host's instance waiting for FinishIncoming (state creating) with
// its staged address and hypervisor (StageIncoming), inside the caller's
// transaction q.
func (l *Local) AdoptIncoming(ctx context.Context, q store.Q, id string) error {
	st, err := l.stagedIncoming(id)
	if err != nil {
		return errs.New(errs.FailedPrecondition, "adopt vm %s: %v", id, err)
	}
	// The reservation becomes the row's (a staged copy of an older
	// engine has none: the check below is then what guards its address).
	if err := store.ReleaseAddress(ctx, q, id); err != nil {
		return err
	}
	ips, _, cids, err := store.UsedAddresses(ctx, q)
	if err != nil {
		return err
	}
	for i := range ips {
		if ips[i] == st.IP || cids[i] == st.CID {
			return errs.New(errs.FailedPrecondition, "adopt vm %s: its staged address %s (cid %d) was taken meanwhile", id, st.IP, st.CID)
		}
	}
	if _, err := netip.ParseAddr(st.IP); err != nil {
		return fmt.Errorf("adopt vm %s: %w", id, err)
	}
	if err := store.AdoptVM(ctx, q, id, st.IP, st.MAC, st.CID); err != nil {
		return err
	}
	v, err := store.GetVMByID(ctx, q, id)
	if err != nil {
		return err
	}
	v.State, v.Handle, v.AgentKey = vm.Creating, st.Handle, st.AgentKey
	return store.UpdateVM(ctx, q, v)
}
