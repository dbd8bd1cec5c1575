package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// webCommands are the proxy commands: expose, share, domain.
func webCommands() []*Command {
	return []*Command{
		{Name: "expose", Usage: "NAME --port N", Summary: "Choose the VM port its web address forwards to (default 80)", MinArgs: 1, MaxArgs: 1,
			Flags: func(fs *flag.FlagSet) { fs.Int("port", 0, "port in the VM (1-65535)") },
			Run:   runExpose},
		{Name: "share", Usage: "NAME [--public | --private] [--link] [--ttl DURATION]",
			Summary: "Open a VM's web address: a sign-in link for you, public access, or a link for others", MinArgs: 1, MaxArgs: 1,
			Flags: func(fs *flag.FlagSet) {
				fs.Bool("public", false, "anyone may open the VM's web address")
				fs.Bool("private", false, "only you (signed in) and holders of share links may")
				fs.Bool("link", false, "print a reusable link that admits anyone who opens it")
				fs.String("ttl", "", "link lifetime, e.g. 30m, 12h, 7d (default 10m for sign-in, 7d for --link)")
			},
			Run: runShare},
		{Name: "domain", Summary: "Serve a VM at your own domain names", Sub: []*Command{
			{Name: "add", Usage: "NAME DOMAIN [--verify]", Summary: "Attach a domain and verify its DNS record (CNAME or TXT)", MinArgs: 2, MaxArgs: 2,
				Flags: func(fs *flag.FlagSet) {
					fs.Bool("verify", false, "fail unless the domain verifies now (re-check after publishing the record)")
				},
				Run: runDomainAdd},
			{Name: "verify", Usage: "NAME DOMAIN", Summary: "Re-check a domain's DNS record", MinArgs: 2, MaxArgs: 2, Run: func(ctx context.Context, x *Ctx) error {
				return call(ctx, x, func(be service.Backend) (service.Domain, error) { return be.VerifyDomain(ctx, x.Args[0], x.Args[1]) }, func(w io.Writer, d service.Domain) { printDomain(w, d) })
			}},
			{Name: "list", Usage: "NAME", Summary: "List a VM's domains", MinArgs: 1, MaxArgs: 1, Run: func(ctx context.Context, x *Ctx) error {
				return call(ctx, x, func(be service.Backend) ([]service.Domain, error) { return be.ListDomains(ctx, x.Args[0]) }, func(w io.Writer, ds []service.Domain) {
					tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "DOMAIN\tVM\tVERIFIED\tCNAME TARGET")
					for _, d := range ds {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Name, d.VM, yesNo(d.Verified), d.CNAMETarget)
					}
					tw.Flush()
				})
			}},
			{Name: "rm", Usage: "NAME DOMAIN", Summary: "Detach a domain from a VM", MinArgs: 2, MaxArgs: 2, Run: func(ctx context.Context, x *Ctx) error {
				wb, err := x.Backend(ctx)
				if err != nil {
					return err
				}
				if err := wb.RemoveDomain(ctx, x.Args[0], x.Args[1]); err != nil {
					return err
				}
				return x.Print(map[string]string{"vm": x.Args[0], "domain": x.Args[1], "removed": "true"}, func(w io.Writer) {
					fmt.Fprintf(w, "removed %s from %s\n", x.Args[1], x.Args[0])
				})
			}},
		}},
	}
}

func runExpose(ctx context.Context, x *Ctx) error {
	port := intFlag(x.FS, "port")
	if port == 0 {
		return errs.New(errs.InvalidArgument, "--port is required (1-65535)")
	}
	return call(ctx, x, func(be service.Backend) (service.WebInfo, error) { return be.Expose(ctx, x.Args[0], port) }, func(w io.Writer, info service.WebInfo) {
		fmt.Fprintf(w, "%s: port %d (%s)", info.VM, info.Port, access(info.Public))
		if info.URL != "" {
			fmt.Fprintf(w, " at %s", info.URL)
		}
		fmt.Fprintln(w)
	})
}

func runShare(ctx context.Context, x *Ctx) error {
	pub, priv := boolFlag(x.FS, "public"), boolFlag(x.FS, "private")
	if pub && priv {
		return errs.New(errs.InvalidArgument, "--public and --private exclude each other")
	}
	req := service.ShareRequest{Link: boolFlag(x.FS, "link")}
	if pub || priv {
		req.Public = &pub
	}
	ttl, err := ParseExpiry(strFlag(x.FS, "ttl"))
	if err != nil {
		return err
	}
	req.TTLSeconds = int64(ttl / time.Second)
	return call(ctx, x, func(be service.Backend) (service.WebInfo, error) { return be.Share(ctx, x.Args[0], req) }, func(w io.Writer, info service.WebInfo) { printShare(w, info) })
}

func printShare(w io.Writer, info service.WebInfo) {
	fmt.Fprintf(w, "%s is %s at %s\n", info.VM, access(info.Public), info.URL)
	if info.PublicIP != "" {
		host := info.URL
		if u, err := url.Parse(info.URL); err == nil && u.Hostname() != "" {
			host = u.Hostname()
		}
		rec := "A"
		if strings.Contains(info.PublicIP, ":") {
			rec = "AAAA"
		}
		fmt.Fprintf(w, "DNS: %s must resolve to %s (an %s record for it or for the domain's wildcard)\n", host, info.PublicIP, rec)
	}
	until := info.ExpiresAt.Local().Format("2006-01-02 15:04 MST")
	if info.LoginURL != "" {
		fmt.Fprintf(w, "Sign in (this link works once, until %s):\n  %s\n", until, info.LoginURL)
	}
	if info.ShareURL != "" {
		fmt.Fprintf(w, "Anyone who opens this link gets in, until %s:\n  %s\n", until, info.ShareURL)
	}
}

func runDomainAdd(ctx context.Context, x *Ctx) error {
	wb, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	d, err := wb.AddDomain(ctx, x.Args[0], x.Args[1])
	if err != nil {
		return err
	}
	if boolFlag(x.FS, "verify") && !d.Verified {
		return errs.New(errs.FailedPrecondition, "%s", d.Problem)
	}
	return x.Print(d, func(w io.Writer) { printDomain(w, d) })
}

func printDomain(w io.Writer, d service.Domain) {
	if d.Verified {
		fmt.Fprintf(w, "%s serves %s (verified); its certificate is requested on the first visit\n", d.Name, d.VM)
		return
	}
	fmt.Fprintf(w, "%s is claimed for %s but not verified yet (the claim lapses %s). Publish one of these DNS records:\n",
		d.Name, d.VM, d.ExpiresAt.Local().Format("2006-01-02 15:04 MST"))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if d.CNAMETarget != "" {
		fmt.Fprintf(tw, "  %s.\tCNAME\t%s.\n", d.Name, d.CNAMETarget)
	}
	fmt.Fprintf(tw, "  %s.\tTXT\t%q\n", d.TXTName, d.TXTValue)
	tw.Flush()
	fmt.Fprintf(w, "then run: minions domain verify %s %s\n", d.VM, d.Name)
}

func access(public bool) string {
	if public {
		return "public"
	}
	return "private"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
