-- Restart policy and audit events (issue 17).

-- A VM's restart policy and supervisor state, one row per VM (a VM with no
-- row has policy 'always'). restart_at (unix ms, 0 = none) is when the
-- supervisor next starts the VM; streak counts crashes in a row and sets
-- the backoff; restarts counts every automatic restart; reason is why the
-- VM last went down by itself ('crashed', 'host-reboot', 'poweroff', '').
CREATE TABLE vm_restart (
	vm_id       TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
	policy      TEXT NOT NULL DEFAULT 'always',
	restarts    INTEGER NOT NULL DEFAULT 0,
	streak      INTEGER NOT NULL DEFAULT 0,
	restart_at  INTEGER NOT NULL DEFAULT 0,
	reason      TEXT NOT NULL DEFAULT ''
);

-- The audit log: who did what to which VM, and what the host did by itself
-- (actor 'host'). vm_id is not a foreign key: events outlive their VM.
CREATE TABLE events (
	id       INTEGER PRIMARY KEY AUTOINCREMENT,
	at       INTEGER NOT NULL,
	vm_id    TEXT NOT NULL DEFAULT '',
	vm_name  TEXT NOT NULL DEFAULT '',
	owner_id TEXT NOT NULL DEFAULT '',
	actor    TEXT NOT NULL,
	kind     TEXT NOT NULL,
	message  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_vm ON events(vm_id, id);
CREATE INDEX events_owner ON events(owner_id, id);
CREATE INDEX events_at ON events(at);
