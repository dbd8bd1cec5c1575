package service

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"golang.org/x/crypto/ssh"
)

// Quota limits what one user's VMs may hold together. Zero means unlimited.
type Quota struct {
	MaxVMs       int `json:"max_vms"`
	MaxCPUs      int `json:"max_cpus"`
	MaxMemoryMiB int `json:"max_memory_mib"`
	MaxDiskGiB   int `json:"max_disk_gib"`
}

// Validate rejects negative limits.
func (q Quota) Validate() error {
	if q.MaxVMs < 0 || q.MaxCPUs < 0 || q.MaxMemoryMiB < 0 || q.MaxDiskGiB < 0 {
		return errs.New(errs.InvalidArgument, "quota limits must be zero (unlimited) or positive")
	}
	return nil
}

// Usage is what a user's VMs hold now.
type Usage struct {
	VMs       int `json:"vms"`
	CPUs      int `json:"cpus"`
	MemoryMiB int `json:"memory_mib"`
	DiskGiB   int `json:"disk_gib"`
	// SnapshotBytes is what the VMs' snapshots take on disk; it counts
	// against the disk quota with DiskGiB.
	SnapshotBytes int64 `json:"snapshot_bytes"`
}

// User is the public view of a user.
type User struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Admin     bool      `json:"admin"`
	Quota     Quota     `json:"quota"`
	Usage     Usage     `json:"usage"`
	SSHKeys   int       `json:"ssh_keys"`
	CreatedAt time.Time `json:"created_at"`
}

func (s *Service) userView(ctx context.Context, q store.Q, u store.User) (User, error) {
	use, err := store.UserUsage(ctx, q, u.ID)
	if err != nil {
		return User{}, err
	}
	keys, err := store.ListSSHKeys(ctx, q, u.ID)
	if err != nil {
		return User{}, err
	}
	snaps, err := store.UserSnapshotBytes(ctx, q, u.ID)
	if err != nil {
		return User{}, err
	}
	return User{ID: u.ID, Name: u.Name, Admin: u.Admin, CreatedAt: u.CreatedAt, SSHKeys: len(keys),
		Quota: Quota{MaxVMs: u.MaxVMs, MaxCPUs: u.MaxCPUs, MaxMemoryMiB: u.MaxMemoryMiB, MaxDiskGiB: u.MaxDiskGiB},
		Usage: Usage{VMs: use.VMs, CPUs: use.CPUs, MemoryMiB: use.MemoryMiB, DiskGiB: use.DiskGiB, SnapshotBytes: snaps}}, nil
}

// requireAdmin fails unless c is an admin: errs.Unauthenticated for an
// anonymous caller, errs.PermissionDenied for a signed-in user.
func requireAdmin(c Caller, what string) error {
	switch {
	case c.UserID == "" && !c.Admin:
		return errs.New(errs.Unauthenticated, "sign in to %s", what)
	case !c.Admin:
		return errs.New(errs.PermissionDenied, "only an admin may %s", what)
	}
	return nil
}

// AddUser creates a user, optionally with a first SSH public key. A key
// needs the same proof of possession as AddSSHKey, made by the calling
// admin (the nonce is the admin's, from SSHKeyChallenge): nobody may hand
// a key they do not hold to an account. sshKey with an empty PublicKey
// means no key. Non-admin users get the configured default quota.
// Admins only. A taken name or a key registered to someone
// else is errs.AlreadyExists; nothing is created then.
func (s *Service) AddUser(ctx context.Context, c Caller, name string, admin bool, sshKey KeyProof) (User, error) {
	if err := requireAdmin(c, "add users"); err != nil {
		return User{}, err
	}
	if err := vm.ValidName("user", name); err != nil {
		return User{}, err
	}
	u := store.User{ID: vm.NewID(), Name: name, Admin: admin, CreatedAt: time.Now().UTC()}
	s.applyDefaultQuota(&u)
	var key *store.SSHKey
	if strings.TrimSpace(sshKey.PublicKey) != "" {
		pub, comment, err := s.verifyKeyProof(c, sshKey)
		if err != nil {
			return User{}, err
		}
		key = &store.SSHKey{ID: vm.NewID(), UserID: u.ID, Fingerprint: ssh.FingerprintSHA256(pub),
			PublicKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))), Comment: comment, CreatedAt: u.CreatedAt}
	}
	var out User
	err := s.DB.Tx(ctx, func(q store.Q) error {
		if err := store.InsertUser(ctx, q, u); err != nil {
			return err
		}
		if key != nil {
			if err := store.InsertSSHKey(ctx, q, *key); err != nil {
				return err
			}
		}
		var err error
		out, err = s.userView(ctx, q, u)
		return err
	})
	if err != nil {
		return User{}, fmt.Errorf("add user %s: %w", name, err)
	}
	s.log.Info("user added", "user", name, "admin", admin, "by", c.Name)
	return out, nil
}

// ListUsers lists every user with their quota and usage. Admins only.
func (s *Service) ListUsers(ctx context.Context, c Caller) ([]User, error) {
	if err := requireAdmin(c, "list users"); err != nil {
		return nil, err
	}
	rows, err := store.ListUsers(ctx, s.DB)
	if err != nil {
		return nil, err
	}
	out := make([]User, 0, len(rows))
	for _, r := range rows {
		u, err := s.userView(ctx, s.DB, r)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// RemoveUser deletes a user with their keys and tokens. Admins only; it
// refuses (errs.FailedPrecondition) while the user owns VMs, and refuses to
// remove the caller.
func (s *Service) RemoveUser(ctx context.Context, c Caller, name string) error {
	if err := requireAdmin(c, "remove users"); err != nil {
		return err
	}
	return s.DB.Tx(ctx, func(q store.Q) error {
		u, err := userByRef(ctx, q, name)
		if err != nil {
			return err
		}
		if u.ID == c.UserID {
			return errs.New(errs.FailedPrecondition, "you cannot remove yourself")
		}
		use, err := store.UserUsage(ctx, q, u.ID)
		if err != nil {
			return err
		}
		if use.VMs > 0 {
			return errs.New(errs.FailedPrecondition, "user %s owns %d vms: destroy them first", u.Name, use.VMs)
		}
		if err := store.DeleteUser(ctx, q, u.ID); err != nil {
			return err
		}
		s.log.Info("user removed", "user", u.Name, "by", c.Name)
		return nil
	})
}

// SetQuota replaces a user's quota. Admins only. Existing VMs are kept
// even when they exceed it; the quota applies to what is created or grown
// from now on.
func (s *Service) SetQuota(ctx context.Context, c Caller, name string, quota Quota) (User, error) {
	if err := requireAdmin(c, "set quotas"); err != nil {
		return User{}, err
	}
	if err := quota.Validate(); err != nil {
		return User{}, err
	}
	var out User
	err := s.DB.Tx(ctx, func(q store.Q) error {
		u, err := userByRef(ctx, q, name)
		if err != nil {
			return err
		}
		u.MaxVMs, u.MaxCPUs, u.MaxMemoryMiB, u.MaxDiskGiB = quota.MaxVMs, quota.MaxCPUs, quota.MaxMemoryMiB, quota.MaxDiskGiB
		if err := store.UpdateUser(ctx, q, u); err != nil {
			return err
		}
		out, err = s.userView(ctx, q, u)
		return err
	})
	return out, err
}
