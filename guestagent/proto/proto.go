package proto

// Global request names (SSH global requests, want-reply true, JSON payload).
const (
	ReqPing      = "ping@minions"
	ReqStatus    = "status@minions"
	ReqConfigure = "configure@minions"
	ReqFSFreeze  = "fsfreeze@minions"
	ReqFSThaw    = "fsthaw@minions"
	ReqGrowFS    = "growfs@minions"
	ReqShutdown  = "shutdown@minions"
)

// DefaultPortName is the virtio-serial port name of the agent channel.
const DefaultPortName = "org.minions.agent"

// DefaultVsockPort is the AF_VSOCK port the agent listens on.
const DefaultVsockPort = 1024

// ReadyMarker is printed on the console once the agent listens.
const ReadyMarker = "minions-agent: ready"

// Error is the payload of a failed (false) reply.
type Error struct {
	Error string `json:"error"`
}

// PingReply answers ReqPing.
type PingReply struct {
	Version  string `json:"version"`
	BootID   string `json:"boot_id"`
	UptimeMS int64  `json:"uptime_ms"`
}

// Status answers ReqStatus. Sizes are bytes.
type Status struct {
	Hostname     string     `json:"hostname"`
	Kernel       string     `json:"kernel"`
	UptimeS      float64    `json:"uptime_s"`
	Load         [3]float64 `json:"load"`
	MemTotal     uint64     `json:"mem_total"`
	MemAvailable uint64     `json:"mem_available"`
	DiskTotal    uint64     `json:"disk_total"`
	DiskFree     uint64     `json:"disk_free"`
	Procs        int        `json:"procs"`
	Addrs        []string   `json:"addrs"`
	AgentVersion string     `json:"agent_version"`
	MachineID    string     `json:"machine_id"`
	// AgentOutdated and AgentWarning are filled in by the host, never the
	// guest: the agent's version differs from the agent binary the host
	// gives VMs now (after an upgrade), which the VM gets on its next
	// restart.
	AgentOutdated bool   `json:"agent_outdated,omitempty"`
	AgentWarning  string `json:"agent_warning,omitempty"`
}

// Configure is the payload of ReqConfigure; absent fields are left alone.
type Configure struct {
	Hostname       *string  `json:"hostname,omitempty"`
	AuthorizedKeys []string `json:"authorized_keys,omitempty"`
	MachineID      *string  `json:"machine_id,omitempty"`
	// TimeUnixNano sets the guest clock (e.g. after a snapshot restore).
	TimeUnixNano *int64 `json:"time_unix_nano,omitempty"`
	// Reseed is mixed into the guest's entropy pool (base64 in JSON).
	Reseed        []byte `json:"reseed,omitempty"`
	RegenHostKeys bool   `json:"regen_host_keys,omitempty"`
	// HostKeys, if not empty, replace the host keys (authorized_keys
	// lines) the agent accepts logins from until the guest reboots: a VM
	// moved with its memory to another host trusts that host's key (the
	// kernel command line names the key of the host it booted on).
	HostKeys []string `json:"host_keys,omitempty"`
	// Network moves eth0 to another MAC and address (a VM moved with its
	// memory to another host) and announces it; nothing else changes.
	Network *Network `json:"network,omitempty"`
}

// Network is eth0's configuration (Configure.Network).
type Network struct {
	MAC     string `json:"mac,omitempty"` // "52:54:00:..."; "" keeps it
	IP      string `json:"ip"`            // "a.b.c.d/len"
	Gateway string `json:"gateway,omitempty"`
	DNS     string `json:"dns,omitempty"`
}

// FreezeReply answers ReqFSFreeze: the mount points frozen.
type FreezeReply struct {
	Frozen []string `json:"frozen"`
}

// GrowReply answers ReqGrowFS: the root filesystem's new size in bytes.
type GrowReply struct {
	Size int64 `json:"size"`
}

// Shutdown is the payload of ReqShutdown.
type Shutdown struct {
	Reboot bool `json:"reboot"`
}
