package service

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"golang.org/x/crypto/ssh"
)

func testKey(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func insertKey(t *testing.T, fx *fixture, userID string, key ssh.PublicKey) {
	t.Helper()
	err := store.InsertSSHKey(context.Background(), fx.svc.DB, store.SSHKey{ID: ssh.FingerprintSHA256(key)[7:19], UserID: userID,
		Fingerprint: ssh.FingerprintSHA256(key), PublicKey: string(ssh.MarshalAuthorizedKey(key)), CreatedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
}

// TestIdentityResolutionNamesLikeIDs is issue 11 item 2's table: a user
// named after another user's ID and a VM named after another VM's ID (rows
// that vm.ValidName now refuses, inserted directly as an older database
// may hold them) never resolve to the other one, through UserByKey, token
// auth, caller-by-name, lookup by ID and the reload by ID under the lock.
func TestIdentityResolutionNamesLikeIDs(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	alice := fx.user
	// Mallory's row comes first: a lookup matching both rows finds hers.
	db := fx.svc.DB
	mallory := store.User{ID: "0badc0ffee00", Name: alice.UserID, CreatedAt: time.Now()}
	if err := store.InsertUser(ctx, db, mallory); err != nil {
		t.Fatal(err)
	}
	// Alice signs up again so her row is the later one too.
	victim := store.User{ID: "f00dfeedbeef", Name: "victim", CreatedAt: time.Now()}
	mallory2 := store.User{ID: "0badc0ffee01", Name: victim.ID, CreatedAt: time.Now()}
	for _, u := range []store.User{mallory2, victim} {
		if err := store.InsertUser(ctx, db, u); err != nil {
			t.Fatal(err)
		}
	}
	aliceKey, malKey, victimKey, mal2Key := testKey(t), testKey(t), testKey(t), testKey(t)
	insertKey(t, fx, alice.UserID, aliceKey.PublicKey())
	insertKey(t, fx, mallory.ID, malKey.PublicKey())
	insertKey(t, fx, victim.ID, victimKey.PublicKey())
	insertKey(t, fx, mallory2.ID, mal2Key.PublicKey())
	const secret, secret2 = TokenPrefix + "alice-secret", TokenPrefix + "victim-secret"
	for _, tk := range []store.Token{
		{ID: "t1", UserID: alice.UserID, Hash: hashToken(secret), CreatedAt: time.Now()},
		{ID: "t2", UserID: victim.ID, Hash: hashToken(secret2), CreatedAt: time.Now()},
	} {
		if err := store.InsertToken(ctx, db, tk); err != nil {
			t.Fatal(err)
		}
	}
	// Mallory's VM is named after alice's VM's ID, and comes first.
	vm := func(id, name, owner string, n int) store.VM {
		return store.VM{ID: id, Name: name, OwnerID: owner, Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
			IP: "10.210.0." + string(rune('0'+n)), MAC: "02:00:00:00:00:0" + string(rune('0'+n)), CID: uint32(2 + n),
			State: store.StateStopped, CreatedAt: time.Now()}
	}
	const aliceVM, malVM = "abcabcabcabc", "dddddddddddd"
	if err := store.InsertVM(ctx, db, vm(malVM, aliceVM, mallory.ID, 1)); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertVM(ctx, db, vm(aliceVM, "web", alice.UserID, 2)); err != nil {
		t.Fatal(err)
	}

	type who struct{ id, name string }
	check := func(what string, c Caller, err error, want who) {
		t.Helper()
		if err != nil || c.UserID != want.id || c.Name != want.name {
			t.Errorf("%s = %s (%s), %v; want %s (%s)", what, c.Name, c.UserID, err, want.name, want.id)
		}
	}
	a, m, v, m2 := who{alice.UserID, "alice"}, who{mallory.ID, mallory.Name}, who{victim.ID, "victim"}, who{mallory2.ID, mallory2.Name}
	for _, tc := range []struct {
		key  ssh.Signer
		want who
	}{{aliceKey, a}, {malKey, m}, {victimKey, v}, {mal2Key, m2}} {
		c, err := fx.svc.UserByKey(ctx, tc.key.PublicKey())
		check("UserByKey("+tc.want.name+"'s key)", c, err, tc.want)
	}
	c, err := fx.svc.AuthenticateToken(ctx, secret)
	check("AuthenticateToken(alice's)", c, err, a)
	c, err = fx.svc.AuthenticateToken(ctx, secret2)
	check("AuthenticateToken(victim's)", c, err, v)
	c, err = fx.svc.CallerByName(ctx, alice.UserID)
	check("CallerByName(alice's id)", c, err, m)
	c, err = fx.svc.CallerByName(ctx, victim.ID)
	check("CallerByName(victim's id)", c, err, m2)
	c, err = fx.svc.CallerByName(ctx, "alice")
	check("CallerByName(alice)", c, err, a)

	malC := Caller{UserID: mallory.ID, Name: mallory.Name}
	if got, err := fx.svc.Get(ctx, alice, aliceVM); err != nil || got.Name != "web" {
		t.Errorf("alice gets her vm by id = %+v, %v", got, err)
	}
	if got, err := fx.svc.Get(ctx, malC, aliceVM); err != nil || got.ID != malVM {
		t.Errorf("mallory gets her vm named %s = %+v, %v", aliceVM, got, err)
	}
	// The reload by ID under the lock acts on alice's VM, not on the VM
	// named after its ID.
	if got, err := fx.svc.Rename(ctx, alice, "web", "prod"); err != nil || got.ID != aliceVM {
		t.Errorf("alice renames web = %+v, %v", got, err)
	}
	rows, _ := store.ListVMs(ctx, db, "")
	for _, r := range rows {
		want := map[string]string{aliceVM: "prod", malVM: aliceVM}[r.ID]
		if r.Name != want {
			t.Errorf("vm %s (owner %s) is named %q, want %q", r.ID, r.Owner, r.Name, want)
		}
	}
	// A reload by ID re-checks the owner: a row that changed hands
	// meanwhile is not the VM the caller loaded.
	before, err := store.GetVMByID(ctx, db, aliceVM)
	if err != nil {
		t.Fatal(err)
	}
	moved := before
	moved.OwnerID = mallory.ID
	if err := store.UpdateVM(ctx, db, moved); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.svc.reloadVM(ctx, before); !errors.Is(err, errs.NotFound) {
		t.Errorf("reload of a vm that changed owner = %v", err)
	}
}

// Names that read as IDs are refused everywhere a name is chosen, and
// nothing changes.
func TestNamesThatReadAsIDsAreRefused(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	const idLike = "abcdef012345"
	admin, _ := fx.svc.EnsureUser(ctx, "root", true)
	if _, err := fx.svc.RegisterUser(ctx, idLike, testKey(t).PublicKey()); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("RegisterUser(%s) = %v", idLike, err)
	}
	if _, err := fx.svc.AddUser(ctx, admin, idLike, false, KeyProof{}); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("AddUser(%s) = %v", idLike, err)
	}
	if _, err := fx.svc.Create(ctx, fx.user, CreateRequest{Name: idLike}, nil); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("Create(%s) = %v", idLike, err)
	}
	store.InsertVM(ctx, fx.svc.DB, store.VM{ID: "aaaaaaaaaaaa", Name: "web", OwnerID: fx.user.UserID, Image: "minimal@1", CPUs: 1, MemoryMiB: 256,
		DiskGiB: 1, IP: "10.210.0.9", MAC: "02:00:00:00:00:09", CID: 3, State: store.StateStopped, CreatedAt: time.Now()})
	if _, err := fx.svc.Rename(ctx, fx.user, "web", idLike); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("Rename(web, %s) = %v", idLike, err)
	}
	if _, err := fx.svc.Copy(ctx, fx.user, "web", CopyRequest{Name: idLike}, nil); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("Copy(web, %s) = %v", idLike, err)
	}
	users, _ := store.ListUsers(ctx, fx.svc.DB)
	vms, _ := store.ListVMs(ctx, fx.svc.DB, "")
	if len(users) != 2 || len(vms) != 1 || vms[0].Name != "web" {
		t.Errorf("something changed: users %d, vms %+v", len(users), vms)
	}
}
