// Package nixstandin writes a stand-in for nixpkgs that real nix builds
// without a network: its <nixpkgs/nixos> evaluates the configuration file
// Minions writes (called with stub config, lib and pkgs, so its shape and
// agent unit are checked) and builds a "system" whose init starts that
// unit's ExecStart as PID 1, with a static busybox beside it (and
// /bin/sh and /etc/passwd, as NixOS activation makes them). Tests use it
// to drive the NixOS image build (nix-build, closure copy, registration,
// profile, /sbin/init) end to end where nixpkgs cannot be downloaded. It is
// not NixOS: systemd and the NixOS modules are not exercised.
package nixstandin

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Packages are the pkgs attribute names the stub pkgs set offers; the
// configuration may use only these.
var Packages = []string{
	"iproute2", "iputils", "curl", "cacert", "sudo", "git", "vim", "htop", "less", "procps",
	"gcc", "gnumake", "binutils", "pkg-config",
}

// NixConfig is the NIX_CONFIG a test runs nix with: no substituters (no
// network), no build users and no sandbox (a bare nix-bin install as
// root).
const NixConfig = "substituters =\nbuild-users-group =\nsandbox = false\n"

const defaultNix = `# A stand-in for nixpkgs' nixos/default.nix (Minions tests).
{ configuration ? import <nixos-config>, system ? builtins.currentSystem }:
let
  busybox = "${../bb}/busybox";
  pkgs = builtins.listToAttrs (map (n: { name = n; value = "stub-" + n; }) (import ../packages.nix));
  cfg = configuration {
    config = { nix.package.out = "/stub-nix"; };
    lib = { trivial.release = "standin"; optional = c: x: if c then [ x ] else [ ]; };
    inherit pkgs;
  };
  agent = cfg.systemd.services.minions-agent;
  toplevel = derivation {
    name = "nixos-system-minion-standin";
    inherit system;
    builder = busybox;
    args = [ "sh" "-c" ''
      set -e
      ${busybox} mkdir -p $out/bin
      ${busybox} cp ${busybox} $out/bin/busybox
      # Like NixOS activation, make /bin/sh and /etc/passwd; then start
      # the agent.
      bb=$out/bin/busybox
      {
        echo "#!$bb sh"
        echo "$bb mkdir -p /bin && $bb ln -sfn $bb /bin/sh"
        echo "[ -e /etc/passwd ] || echo root:x:0:0:root:/root:/bin/sh > /etc/passwd"
        echo "exec ${agent.serviceConfig.ExecStart}"
      } > $out/init
      ${busybox} chmod 755 $out/init
      echo "${builtins.concatStringsSep " " cfg.environment.systemPackages}" > $out/packages
      echo "${builtins.concatStringsSep " " agent.wantedBy}" > $out/agent-wanted-by
    '' ];
  };
in { config.system.build.toplevel = toplevel; }
`

// Write creates the stand-in nixpkgs in dir (made if missing) with busybox
// (a static binary, e.g. /bin/busybox from busybox-static).
func Write(dir, busybox string) error {
	for _, d := range []string{"nixos", "bb"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "nixos", "default.nix"), []byte(defaultNix), 0o644); err != nil {
		return err
	}
	list := "[\n"
	for _, p := range Packages {
		list += fmt.Sprintf("  %q\n", p)
	}
	list += "]\n"
	if err := os.WriteFile(filepath.Join(dir, "packages.nix"), []byte(list), 0o644); err != nil {
		return err
	}
	in, err := os.Open(busybox)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(filepath.Join(dir, "bb", "busybox"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
