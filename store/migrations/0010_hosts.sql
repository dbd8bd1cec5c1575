-- Several hosts (issue 14): the host registry, one-time join tokens, and
-- where each VM runs.

-- One row per host of the cluster, the control plane's own host included
-- (local = 1). state is what an admin or the join set: 'joining' (a token
-- was issued, the node has not connected), 'ready' or 'cordoned'; a host
-- whose last heartbeat is too old is shown 'unreachable' (computed when
-- read, never stored). nkey is the node's NKey public key: its credential
-- on the fabric ('' until it joins). Capacity is what the node reports:
-- cpus, memory and disk in MiB, and what is free of each.
CREATE TABLE hosts (
	id               TEXT PRIMARY KEY,
	name             TEXT NOT NULL UNIQUE,
	local            INTEGER NOT NULL DEFAULT 0,
	address          TEXT NOT NULL DEFAULT '',
	state            TEXT NOT NULL,
	nkey             TEXT NOT NULL DEFAULT '',
	cpus             INTEGER NOT NULL DEFAULT 0,
	memory_mib       INTEGER NOT NULL DEFAULT 0,
	disk_mib         INTEGER NOT NULL DEFAULT 0,
	memory_free_mib  INTEGER NOT NULL DEFAULT 0,
	disk_free_mib    INTEGER NOT NULL DEFAULT 0,
	version          TEXT NOT NULL DEFAULT '',
	last_heartbeat   INTEGER NOT NULL DEFAULT 0,
	created_at       INTEGER NOT NULL
);
CREATE UNIQUE INDEX hosts_nkey ON hosts(nkey) WHERE nkey != '';
CREATE UNIQUE INDEX hosts_local ON hosts(local) WHERE local = 1;

-- Join tokens: the SHA-256 of a one-time secret that lets the node of
-- host_id exchange it for its credential before expires_at (unix ms).
-- A used token is deleted.
CREATE TABLE host_join_tokens (
	hash        TEXT PRIMARY KEY,
	host_id     TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
	expires_at  INTEGER NOT NULL,
	created_at  INTEGER NOT NULL
);

-- The host a VM runs on; NULL is the control plane's own host (every VM
-- made before this migration).
ALTER TABLE vms ADD COLUMN host_id TEXT REFERENCES hosts(id);
CREATE INDEX vms_host ON vms(host_id);
