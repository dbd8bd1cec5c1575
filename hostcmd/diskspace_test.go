package hostcmd

import (
	"errors"
	"strings"
	"testing"

	"github.com/minionsdev/minions/config"
)

func TestFreeSpaceCheck(t *testing.T) {
	dir := t.TempDir()
	fake := func(free, total uint64, err error) statfsFunc {
		return func(p string) (uint64, uint64, error) {
			if p != dir {
				t.Errorf("statfs(%s), want %s", p, dir)
			}
			return free, total, err
		}
	}
	for _, tc := range []struct {
		name        string
		free, total uint64
		err         error
		ok          bool
		detail      string
	}{
		{"plenty", 10 << 30, 20 << 30, nil, true, "10240 MiB free of 20480 MiB (50%) on the filesystem of " + dir},
		{"at the threshold", 2048 << 20, 20 << 30, nil, true, "2048 MiB free"},
		{"below", 1 << 20, 900 << 20, nil, false, "1 MiB free of 900 MiB (0%) on the filesystem of " + dir + ": below min_free_space_mib 2048"},
		{"statfs fails", 0, 0, errors.New("boom"), false, "statfs " + dir + ": boom"},
	} {
		c := freeSpaceCheck(dir, 2048, fake(tc.free, tc.total, tc.err))
		if c.What != "free disk" || c.OK != tc.ok || !strings.Contains(c.Detail, tc.detail) {
			t.Errorf("%s: %+v, want ok=%v and %q", tc.name, c, tc.ok, tc.detail)
		}
	}
	// Before `minions init` the state directory may not exist: its nearest
	// existing parent is asked.
	c := freeSpaceCheck(dir+"/state/sub", 1, fake(2<<20, 4<<20, nil))
	if !c.OK {
		t.Errorf("missing state dir: %+v", c)
	}
	// The configured threshold comes from min_free_space_mib (default 2048).
	var cfg config.Config
	cfg.Defaults()
	if cfg.MinFreeSpaceMiB != 2048 {
		t.Errorf("default min_free_space_mib = %d", cfg.MinFreeSpaceMiB)
	}
	cfg.MinFreeSpaceMiB = -1
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "min_free_space_mib") {
		t.Errorf("negative min_free_space_mib: %v", err)
	}
}
