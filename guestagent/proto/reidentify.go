package proto

// ReqReidentify makes a guest restored from a warm template (or forked from
// another VM) into a VM of its own. Payload Reidentify, reply
// ReidentifyReply.
const ReqReidentify = "reidentify@minions"

// MinEntropy is the least host entropy a Reidentify carries (bytes).
const MinEntropy = 32

// Reidentify is the payload of ReqReidentify. Every field is required
// except MAC, IP, Gateway and DNS (no network change when IP is empty) and
// AuthorizedKeys (none: the owner's keys file is emptied). The agent checks
// all of it before it changes anything.
type Reidentify struct {
	Hostname  string `json:"hostname"`
	MachineID string `json:"machine_id"` // 32 lowercase hex digits
	// MAC is eth0's new address ("52:54:00:..."): the hypervisor gave the
	// clone's NIC this MAC, the guest driver still uses the template's.
	MAC     string `json:"mac,omitempty"`
	IP      string `json:"ip,omitempty"` // "a.b.c.d/len"
	Gateway string `json:"gateway,omitempty"`
	DNS     string `json:"dns,omitempty"`
	// AuthorizedKeys are the owner's keys, one authorized_keys line each.
	AuthorizedKeys []string `json:"authorized_keys"`
	// Entropy is fresh host randomness (at least MinEntropy bytes) mixed
	// into the kernel pool before anything random is made.
	Entropy []byte `json:"entropy"`
	// TimeUnixNano is the host's wall clock when it sent the request.
	TimeUnixNano int64 `json:"time_unix_nano"`
	// SSHHostKeys are new sshd host keys made by the host, by type
	// ("ed25519", "ecdsa": P-256) as OpenSSH PEM private keys; the guest
	// makes the types missing here. Made on the host's CPU they cost
	// nothing; made under TCG in a restored guest they took 130-340 ms.
	SSHHostKeys map[string]string `json:"ssh_host_keys,omitempty"`
	// AgentHostKey is the agent's new ed25519 host key made by the host
	// (OpenSSH PEM private key); "": the guest makes one.
	AgentHostKey string `json:"agent_host_key,omitempty"`
}

// ReidentifyReply answers ReqReidentify.
type ReidentifyReply struct {
	// AgentHostKey is the agent's new host key (authorized_keys format):
	// the host pins it in place of the template's.
	AgentHostKey string `json:"agent_host_key"`
	// SSHHostKeys are the new sshd host keys (.pub lines), if the guest
	// has OpenSSH.
	SSHHostKeys []string `json:"ssh_host_keys,omitempty"`
	// Removed lists the template leftovers deleted (leases, seeds, the
	// old journal), guest paths.
	Removed []string `json:"removed,omitempty"`
	// Steps lists what was done, in order, for logs and the note.
	Steps []string `json:"steps"`
	// StepMillis is how long each of Steps took in the guest, in ms
	// (the profile of re-identification).
	StepMillis []int64 `json:"step_ms,omitempty"`
	// FlushPending says the guest's flush of the new identity files to its
	// disk runs after this reply (the files are in place in the guest; a
	// guest crash before the flush ends may lose them on its disk).
	FlushPending bool `json:"flush_pending,omitempty"`
	// ClockFromReceipt says the guest set its clock to TimeUnixNano plus
	// the time it had spent since it received the request: the clock
	// lags the host's by the request's transit only, not by the steps
	// before the clock's (older agents set TimeUnixNano as it was).
	ClockFromReceipt bool `json:"clock_from_receipt,omitempty"`
	// NetworkMillis is how long eth0's move took, in ms: it runs beside
	// the steps from "write hostname" on (their times include its share
	// of the guest's CPU); 0 when the network did not move.
	NetworkMillis int64 `json:"network_ms,omitempty"`
	// CPU is what the guest's CPUs did during the re-identification
	// (absent from older agents): how much of its time was the agent's
	// own work, other processes' or waiting for the disk.
	CPU *ReidentifyCPU `json:"cpu,omitempty"`
}

// ReidentifyCPU splits the guest's time during a re-identification, in
// ms (10 ms resolution for the whole guest's figures).
type ReidentifyCPU struct {
	// WallMillis is the guest's wall time from the handler's start to
	// the reply.
	WallMillis int64 `json:"wall_ms"`
	// AgentMillis is the agent's own CPU time (every thread, user and
	// system) over WallMillis, from getrusage: the scheduler's clock, which
	// also runs while a TCG guest's vCPU thread waits for a host CPU, so on
	// a loaded host it can exceed BusyMillis.
	AgentMillis int64 `json:"agent_ms"`
	// BusyMillis is every guest CPU's busy time (the agent's included;
	// not idle, not iowait) summed over the CPUs, from /proc/stat's
	// sampled ticks. BusyMillis - AgentMillis is what other processes and
	// the kernel took: a lower bound, meaningful on a quiet host.
	BusyMillis int64 `json:"busy_ms"`
	// IOWaitMillis is the guest CPUs' time idle with disk I/O pending.
	IOWaitMillis int64 `json:"iowait_ms"`
}
