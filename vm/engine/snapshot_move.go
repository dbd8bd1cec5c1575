package engine

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// Memory snapshots that move with their VM (issue 15). The guest agent in
// a snapshot's saved memory trusts the keys it trusted when the snapshot
// was taken; the host's own key never leaves its host, so another host
// could not log in to a restored copy. So a memory snapshot is taken with
// the agent trusting, besides this host's key, a key of the snapshot's
// own (snapKeyFile, kept with the snapshot, 0600, and told to the agent
// only for the instant of the save); the host it was taken on is noted
// (snapHostFile). A bundle carries such a snapshot's memory and key
// (BundleSnapshot.Memory); a snapshot without them (taken by an older
// engine, or when the agent did not answer) moves as its disk only
// (BundleHeader.Dropped).
//
// Restoring a memory snapshot taken on another host (resumeMovedSnapshot)
// is a copy's restore: this host's MAC, the agent logged in to with the
// snapshot's key, then the guest moved to the instance's address here,
// its clock stepped and its agent told to trust this host's key only. Its
// processes continue from the instant of the snapshot.

const (
	snapKeyFile  = "agent_key"  // the snapshot's own agent key (OpenSSH private key)
	snapHostFile = "taken_on"   // authorized_keys line of the host the snapshot was taken on
	snapMemDir   = "memory"     // the snapshot's saved memory and device state
	snapDiskFile = "disk.qcow2" // the snapshot's disk
)

// newSnapshotKey makes a snapshot's agent key: its OpenSSH PEM and its
// authorized_keys line.
func newSnapshotKey() ([]byte, string, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", err
	}
	blk, err := ssh.MarshalPrivateKey(priv, "minions snapshot")
	if err != nil {
		return nil, "", err
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, "", err
	}
	return pem.EncodeToMemory(blk), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))), nil
}

// keySnapshot has v's agent trust a new snapshot key besides this host's
// while a memory snapshot into dir is saved: it writes the key and the
// host's line into dir and returns the undo that has the agent trust this
// host's key only again (run once the VM runs on). If the agent does not
// answer, the snapshot is taken without a key (it then moves as a disk
// snapshot) and undo does nothing.
func (l *Local) keySnapshot(ctx context.Context, v store.VM, dir string) (undo func()) {
	nothing := func() {}
	key, line, err := newSnapshotKey()
	if err == nil {
		kctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = l.setAgentKeys(kctx, v, l.hostKeyLine(), line)
		cancel()
	}
	if err != nil {
		l.log.Warn("memory snapshot without its own agent key: it stays on this host's key (a move carries its disk only)", "vm_id", v.ID, "err", err)
		return nothing
	}
	again := func() {
		if err := l.setAgentKeys(context.WithoutCancel(ctx), v, l.hostKeyLine()); err != nil {
			l.log.Warn("memory snapshot: agent host keys", "vm_id", v.ID, "err", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, snapKeyFile), key, 0o600); err != nil {
		again()
		return nothing
	}
	os.WriteFile(filepath.Join(dir, snapHostFile), []byte(l.hostKeyLine()+"\n"), 0o600)
	return again
}

// movableSnapshot reports whether snapshot dir's memory moves with it:
// it has its own agent key and saved memory.
func movableSnapshot(dir string) bool {
	return fileExists(filepath.Join(dir, snapKeyFile)) && exists(filepath.Join(dir, snapMemDir))
}

// snapshotMoved reports whether memory snapshot dir was taken on another
// host (and can be restored here: it has its own key).
func (l *Local) snapshotMoved(dir string) bool {
	if !fileExists(filepath.Join(dir, snapKeyFile)) {
		return false
	}
	b, err := os.ReadFile(filepath.Join(dir, snapHostFile))
	return err != nil || strings.TrimSpace(string(b)) != l.hostKeyLine()
}

// resumeMovedSnapshot starts row from memory snapshot dir taken on another
// host (see above). The caller has put the snapshot's disk in place.
func (l *Local) resumeMovedSnapshot(ctx context.Context, o *op, row store.VM, dir string, progress Progress) (store.VM, error) {
	fk, ok := l.Driver.(hypervisor.Forker)
	if !ok || !l.Driver.Caps().MemorySnapshot {
		return row, errs.New(errs.FailedPrecondition, "the %s driver cannot restore a memory snapshot taken on another host", l.Driver.Name())
	}
	pemKey, err := os.ReadFile(filepath.Join(dir, snapKeyFile))
	if err != nil {
		return row, err
	}
	signer, err := ssh.ParsePrivateKey(pemKey)
	if err != nil {
		return row, fmt.Errorf("snapshot agent key: %w", err)
	}
	img, err := l.Images.Resolve(ctx, row.Image)
	if err != nil {
		return row, err
	}
	var u undo
	defer u.run()
	ip, run, err := l.attach(ctx, o, &u, row, progress, "restore memory")
	if err != nil {
		return row, err
	}
	start := time.Now()
	cfg := l.agentConfig(row.AgentKey, nil)
	cfg.Signer = signer
	row, h, cl, _, err := l.restoreCopyReady(ctx, o, &u, fk, row, l.spec(row, img, run, ip), filepath.Join(dir, snapMemDir), cfg, "restore memory", progress)
	if err != nil {
		return row, err
	}
	defer cl.Close()
	if row, err = l.settleMovedGuest(ctx, o, cl, row, ip, progress); err != nil {
		return row, err
	}
	l.log.Info("vm restored from a memory snapshot taken on another host", "vm_id", row.ID, "vm", row.Name, "pid", h.PID,
		"ready_ms", time.Since(start).Milliseconds())
	u = nil
	return row, nil
}

// addSnapshotMemory adds snapshot snapID's key and memory files to a
// bundle (add takes a path relative to the instance's directory).
func (l *Local) addSnapshotMemory(id, snapID string, add func(rel string) error) error {
	rel := "snapshots/" + snapID + "/"
	if err := add(rel + snapKeyFile); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(l.snapDir(id, snapID), snapMemDir))
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || !stateFileRE().MatchString(e.Name()) {
			return fmt.Errorf("memory file %q cannot move", e.Name())
		}
		if err := add(rel + snapMemDir + "/" + e.Name()); err != nil {
			return err
		}
	}
	return nil
}
