package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// ParseExpiry parses a token lifetime: a Go duration ("12h", "90m") or a
// whole number of days ("30d"). "" and "0" mean never.
func ParseExpiry(s string) (time.Duration, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 || n > 36500 {
			return 0, errs.New(errs.InvalidArgument, "invalid expiry %q: want e.g. 30d or 12h", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, errs.New(errs.InvalidArgument, "invalid expiry %q: want e.g. 30d or 12h", s)
	}
	return d, nil
}

// adminCommands are user, token and quota management.
func adminCommands() []*Command {
	return []*Command{userCmd(), tokenCmd(), quotaCmd(), shutdownCmd(), hostCmd()}
}

func userCmd() *Command {
	return &Command{Name: "user", Summary: "Manage users (admins)", Sub: []*Command{
		{Name: "add", Usage: "NAME [--ssh-key FILE|-] [--admin]", Summary: "Add a user", MinArgs: 1, MaxArgs: 1,
			Flags: func(fs *flag.FlagSet) {
				fs.String("ssh-key", "", "the user's first SSH key: a public key file whose private key you hold (next to it, or in ssh-agent), or - for stdin")
				fs.Bool("admin", false, "make the user an admin")
			},
			Run: func(ctx context.Context, x *Ctx) error {
				f := strFlag(x.FS, "ssh-key")
				if f != "" && x.Remote {
					return errs.New(errs.InvalidArgument, "over ssh, --ssh-key cannot prove that you hold the key: run `user add` with the minions CLI, "+
						"or add the user without a key and give them a token (`token create --user NAME`) to add their own with `minions ssh-key add`")
				}
				var keys []keyToProve
				if f != "" {
					var err error
					if keys, err = x.readKeysToProve(f); err != nil {
						return err
					}
					if len(keys) > 1 {
						return errs.New(errs.InvalidArgument, "--ssh-key holds %d keys: add one here, the rest with `ssh-key add`", len(keys))
					}
				}
				ab, err := x.Backend(ctx)
				if err != nil {
					return err
				}
				var proof service.KeyProof
				if len(keys) == 1 {
					kp, ok := ab.(KeyProver)
					if !ok {
						return errs.New(errs.FailedPrecondition, "this backend cannot prove keys")
					}
					if proof, err = x.proveKey(ctx, kp, keys[0]); err != nil {
						return err
					}
				}
				u, err := ab.AddUser(ctx, x.Args[0], boolFlag(x.FS, "admin"), proof)
				if err != nil {
					return err
				}
				return x.Print(u, func(w io.Writer) { printUsers(w, []service.User{u}) })
			}},
		{Name: "list", Summary: "List users with their quotas and usage", Run: func(ctx context.Context, x *Ctx) error {
			return call(ctx, x, func(be service.Backend) ([]service.User, error) { return be.ListUsers(ctx) }, func(w io.Writer, us []service.User) { printUsers(w, us) })
		}},
		{Name: "rm", Usage: "NAME [--yes]", Summary: "Remove a user who owns no VMs (and their keys and tokens)", MinArgs: 1, MaxArgs: 1,
			Run: func(ctx context.Context, x *Ctx) error {
				ab, err := x.Backend(ctx)
				if err != nil {
					return err
				}
				if err := x.confirm("remove user " + x.Args[0] + " with their keys and tokens"); err != nil {
					return err
				}
				if err := ab.RemoveUser(ctx, x.Args[0]); err != nil {
					return err
				}
				return x.Print(map[string]string{"removed": x.Args[0]}, func(w io.Writer) { fmt.Fprintf(w, "removed user %s\n", x.Args[0]) })
			}},
	}}
}

func limit(n int, unit string) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%d%s", n, unit)
}

func printUsers(w io.Writer, us []service.User) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tKEYS\tVMS\tCPUS\tMEMORY\tDISK")
	for _, u := range us {
		role := "user"
		if u.Admin {
			role = "admin"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d/%s\t%d/%s\t%d/%s\t%d/%s\n", u.Name, role, u.SSHKeys,
			u.Usage.VMs, limit(u.Quota.MaxVMs, ""), u.Usage.CPUs, limit(u.Quota.MaxCPUs, ""),
			u.Usage.MemoryMiB, limit(u.Quota.MaxMemoryMiB, " MiB"), u.Usage.DiskGiB, limit(u.Quota.MaxDiskGiB, " GiB"))
	}
	tw.Flush()
}

func tokenCmd() *Command {
	return &Command{Name: "token", Summary: "Manage API tokens", Sub: []*Command{
		{Name: "create", Usage: "[--user NAME] [--name LABEL] [--expires 30d]", Summary: "Create a token (its secret is shown once)",
			Flags: func(fs *flag.FlagSet) {
				fs.String("user", "", "create it for this user (admins; default: you)")
				fs.String("name", "", "a label to recognise it by")
				fs.String("expires", "", "lifetime, e.g. 30d or 12h (default: never)")
			},
			Run: func(ctx context.Context, x *Ctx) error {
				exp, err := ParseExpiry(strFlag(x.FS, "expires"))
				if err != nil {
					return err
				}
				return call(ctx, x, func(be service.Backend) (service.NewToken, error) {
					return be.CreateToken(ctx, strFlag(x.FS, "user"), strFlag(x.FS, "name"), exp)
				}, func(w io.Writer, t service.NewToken) {
					fmt.Fprintf(w, "%s\n", t.Secret)
					fmt.Fprintf(x.Stderr, "token %s for %s: shown once, keep it safe (MINIONS_API_KEY, --api-key or ~/.config/minions/token)\n", t.ID, t.User)
				})
			}},
		{Name: "list", Usage: "[--user NAME]", Summary: "List tokens (yours; everyone's for an admin)",
			Flags: func(fs *flag.FlagSet) { fs.String("user", "", "only this user's") },
			Run: func(ctx context.Context, x *Ctx) error {
				return call(ctx, x, func(be service.Backend) ([]service.Token, error) { return be.ListTokens(ctx, strFlag(x.FS, "user")) }, func(w io.Writer, ts []service.Token) {
					tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "ID\tUSER\tNAME\tCREATED\tEXPIRES\tLAST USED")
					for _, t := range ts {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.User, dash(t.Name), day(t.CreatedAt), day(t.ExpiresAt), day(t.LastUsedAt))
					}
					tw.Flush()
				})
			}},
		{Name: "revoke", Usage: "ID", Summary: "Revoke a token", MinArgs: 1, MaxArgs: 1, Run: func(ctx context.Context, x *Ctx) error {
			return do(ctx, x, func(be service.Backend) error { return be.RevokeToken(ctx, x.Args[0]) }, map[string]string{"revoked": x.Args[0]}, fmt.Sprintf("revoked %s", x.Args[0]))
		}},
	}}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func day(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04")
}

func quotaCmd() *Command {
	return &Command{Name: "quota", Summary: "Per-user limits (admins)", Sub: []*Command{
		{Name: "set", Usage: "USER [--vms N] [--cpus N] [--memory MiB] [--disk GiB]", Summary: "Set a user's quota (0: unlimited; unset flags keep their value)",
			MinArgs: 1, MaxArgs: 1,
			Flags: func(fs *flag.FlagSet) {
				fs.Int("vms", 0, "most VMs")
				fs.Int("cpus", 0, "most vCPUs over all VMs")
				fs.Int("memory", 0, "most memory over all VMs, MiB")
				fs.Int("disk", 0, "most disk over all VMs, GiB")
			},
			Run: func(ctx context.Context, x *Ctx) error {
				ab, err := x.Backend(ctx)
				if err != nil {
					return err
				}
				var q service.Quota
				for _, u := range mustUsers(ctx, ab) {
					if u.Name == x.Args[0] {
						q = u.Quota
					}
				}
				x.FS.Visit(func(f *flag.Flag) {
					v, ok := f.Value.(flag.Getter).Get().(int)
					if !ok {
						return // a global flag
					}
					switch f.Name {
					case "vms":
						q.MaxVMs = v
					case "cpus":
						q.MaxCPUs = v
					case "memory":
						q.MaxMemoryMiB = v
					case "disk":
						q.MaxDiskGiB = v
					}
				})
				u, err := ab.SetQuota(ctx, x.Args[0], q)
				if err != nil {
					return err
				}
				return x.Print(u, func(w io.Writer) { printUsers(w, []service.User{u}) })
			}},
	}}
}

// mustUsers lists users for reading current quotas; an error is left for
// SetQuota to report.
func mustUsers(ctx context.Context, ab service.AdminBackend) []service.User {
	us, _ := ab.ListUsers(ctx)
	return us
}
