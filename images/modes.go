package images

import "os"

// The modes of what the catalogue publishes (base images, kernels,
// initramfs) and of the directories holding them. Every VM's hypervisor
// runs as a jailed uid of its own that reads these through bind mounts, so
// they are open to all (they hold nothing secret); published files are
// never written again, hence read-only. Anything that installs catalogue
// files by other means (a backup restore) gives them these modes too.
const (
	DirMode  os.FileMode = 0o755
	FileMode os.FileMode = 0o444
)
