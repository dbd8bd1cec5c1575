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
	// TrustKeys, when set, replace the host keys the agent accepts logins
	// from (authorized_keys lines; at boot, minions.hostkey's alone) until
	// the next boot: a live move adds the target host's key before the
	// move and drops the source's after it. At least one.
	TrustKeys []string `json:"trust_keys,omitempty"`
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
