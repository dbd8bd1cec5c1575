-- Moving a VM to another host (issue 15): a durable record of each move
-- under way, so that a crash of the control plane mid-move is settled on
-- restart with exactly one copy of the VM left. from_host is '' for the
-- control plane's own host. step: 'transfer' (the source is stopped, the
-- target may hold a partial or whole copy: settling removes the target's
-- copy and starts the source again if it ran) or 'cleanup' (the row was
-- switched to the target in the same transaction: settling destroys the
-- source's copy). The record goes when the move ends either way.
CREATE TABLE vm_moves (
	vm_id       TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
	from_host   TEXT NOT NULL,
	to_host     TEXT NOT NULL,
	step        TEXT NOT NULL,
	was_running INTEGER NOT NULL,
	created_at  INTEGER NOT NULL
);
