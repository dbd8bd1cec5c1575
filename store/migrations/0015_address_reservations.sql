-- Addresses held by an instance that has no row of this host yet (issue
-- 15): a live move's incoming copy staged on the control plane's own host
-- (engine.Local.StageIncoming) runs with an address and vsock CID of this
-- host, and its memory is claimed, while the control plane's row still
-- says the VM is on its source node. The reservation counts as used (IP,
-- CID, memory) until the row is adopted (in the switch's transaction) or
-- the staged copy is removed.
CREATE TABLE address_reservations (
    vm_id      TEXT PRIMARY KEY,
    ip         TEXT NOT NULL UNIQUE,
    cid        INTEGER NOT NULL UNIQUE,
    memory_mib INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
