-- Several hosts (issue 14): the control plane keeps its own row for every
-- VM, also for VMs on other hosts (vms.host_id set to a host that is not
-- local). Such a VM's address is its node's business (each host has its
-- own subnet): the control plane records it in node_ip and node_mac, and
-- fills the cluster-wide UNIQUE columns ip, mac and cid with per-VM
-- placeholders ('@' || id for ip and mac, a cid of 2^31 or more), so two
-- hosts' VMs never collide in them and the local engine's allocator (which
-- takes the lowest free cid from 3 and skips what is not an IP) never
-- meets them.
ALTER TABLE vms ADD COLUMN node_ip TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN node_mac TEXT NOT NULL DEFAULT '';

-- A VM destroyed while its host was unreachable: gone from every view at
-- once, and destroyed on its node when the host is next heard from (then
-- the tombstone goes). A removed host takes its tombstones with it.
CREATE TABLE vm_tombstones (
	vm_id       TEXT PRIMARY KEY,
	host_id     TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
	name        TEXT NOT NULL,
	created_at  INTEGER NOT NULL
);
CREATE INDEX vm_tombstones_host ON vm_tombstones(host_id);
