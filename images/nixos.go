package images

import (
	"context"
	"os/exec"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
)

// buildNixOS checks what a NixOS build needs: nix (nix-build and
// nix-instantiate) and a nixpkgs that nix can find. Evaluating and
// copying a NixOS system closure into an image is not implemented yet, so
// a host that has both still gets a FailedPrecondition saying so.
func (c *Catalog) buildNixOS(ctx context.Context, o BuildOptions, progress func(string)) (Image, error) {
	const what = "build nixos image"
	if o.RootfsTarball != "" {
		return Image{}, errs.New(errs.InvalidArgument, "%s: --rootfs-tarball is for fedora only", what)
	}
	progress("check nix")
	var missing []string
	for _, tool := range []string{"nix-build", "nix-instantiate"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return Image{}, errs.New(errs.FailedPrecondition, "%s: nixos needs nix (%s not found; apt-get install nix-bin) and a nixpkgs channel or checkout (NIX_PATH=nixpkgs=...)",
			what, strings.Join(missing, " and "))
	}
	out, err := exec.CommandContext(ctx, "nix-instantiate", "--find-file", "nixpkgs").CombinedOutput()
	if err != nil {
		return Image{}, errs.New(errs.FailedPrecondition, "%s: nix cannot find nixpkgs (%s): set NIX_PATH=nixpkgs=/path/to/nixpkgs or add a channel (nix-channel --add ... nixpkgs)",
			what, strings.TrimSpace(string(out)))
	}
	return Image{}, errs.New(errs.FailedPrecondition, "%s: nix and nixpkgs (%s) are present, but building a NixOS image is not implemented yet", what, strings.TrimSpace(string(out)))
}
