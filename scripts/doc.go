// Package scripts holds no code: its tests check what a newcomer runs
// first. The README's set-up commands are exactly the two scripts (CI runs
// the second), the scripts work as root on a machine without sudo, and the
// release tarball (`make release`) installs into a prefix and runs.
package scripts
