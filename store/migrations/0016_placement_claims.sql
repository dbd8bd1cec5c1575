-- Resources held for a VM that placement admitted onto a host before the
-- VM's row says it is there: a create, a copy onto another host, a
-- drain's move. Placement reads the hosts' usage and inserts the claim in
-- one transaction, and HostUsage and AllocatedMemoryMiB count a claim
-- until the VM's row is on its host (then the row counts) or the claim is
-- released, so concurrent placements cannot all take the same free
-- vCPUs or memory. pid is the process that placed it: claims of a dead
-- process are swept by the next placement.
CREATE TABLE placement_claims (
    vm_id      TEXT PRIMARY KEY,
    host_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    cpus       INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    disk_gib   INTEGER NOT NULL DEFAULT 0,
    pid        INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX placement_claims_host ON placement_claims (host_id);
