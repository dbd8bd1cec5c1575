//go:build tools

// Package deps pins the project's third-party modules until their home packages import them.
package deps

import (
	_ "github.com/BurntSushi/toml"
	_ "github.com/caddyserver/certmagic"
	_ "github.com/charmbracelet/bubbles/table"
	_ "github.com/charmbracelet/bubbletea"
	_ "github.com/charmbracelet/lipgloss"
	_ "github.com/charmbracelet/wish"
	_ "github.com/creack/pty"
	_ "github.com/google/nftables"
	_ "github.com/hashicorp/yamux"
	_ "github.com/mdlayher/vsock"
	_ "github.com/pkg/sftp"
	_ "github.com/vishvananda/netlink"
	_ "golang.org/x/crypto/ssh"
	_ "golang.org/x/sync/errgroup"
	_ "golang.org/x/sys/unix"
	_ "github.com/letsencrypt/pebble/v2/wfe"
	_ "github.com/charmbracelet/x/exp/teatest"
	_ "github.com/pierrec/lz4/v4"
	_ "github.com/charmbracelet/ssh"
	_ "modernc.org/sqlite"
)
