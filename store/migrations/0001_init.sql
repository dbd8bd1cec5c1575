CREATE TABLE users (
	id          TEXT PRIMARY KEY,
	name        TEXT NOT NULL UNIQUE,
	admin       INTEGER NOT NULL DEFAULT 0,
	max_vms     INTEGER NOT NULL DEFAULT 0,
	max_cpus    INTEGER NOT NULL DEFAULT 0,
	max_memory_mib INTEGER NOT NULL DEFAULT 0,
	max_disk_gib   INTEGER NOT NULL DEFAULT 0,
	created_at  INTEGER NOT NULL
);

CREATE TABLE ssh_keys (
	id          TEXT PRIMARY KEY,
	user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
	fingerprint TEXT NOT NULL UNIQUE,
	public_key  TEXT NOT NULL,
	comment     TEXT NOT NULL DEFAULT '',
	created_at  INTEGER NOT NULL
);

CREATE TABLE tokens (
	id          TEXT PRIMARY KEY,
	user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
	hash        TEXT NOT NULL UNIQUE,
	name        TEXT NOT NULL DEFAULT '',
	created_at  INTEGER NOT NULL,
	expires_at  INTEGER NOT NULL DEFAULT 0,
	last_used_at INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE vms (
	id          TEXT PRIMARY KEY,
	name        TEXT NOT NULL UNIQUE,
	owner_id    TEXT NOT NULL REFERENCES users(id),
	image       TEXT NOT NULL,
	cpus        INTEGER NOT NULL,
	memory_mib  INTEGER NOT NULL,
	disk_gib    INTEGER NOT NULL,
	ip          TEXT NOT NULL UNIQUE,
	mac         TEXT NOT NULL UNIQUE,
	cid         INTEGER NOT NULL UNIQUE,
	state       TEXT NOT NULL,
	handle      TEXT NOT NULL DEFAULT '',
	agent_key   TEXT NOT NULL DEFAULT '',
	port        INTEGER NOT NULL DEFAULT 80,
	public      INTEGER NOT NULL DEFAULT 0,
	created_at  INTEGER NOT NULL,
	started_at  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE snapshots (
	id          TEXT PRIMARY KEY,
	vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
	name        TEXT NOT NULL,
	memory      INTEGER NOT NULL DEFAULT 0,
	size_bytes  INTEGER NOT NULL DEFAULT 0,
	created_at  INTEGER NOT NULL,
	UNIQUE (vm_id, name)
);

CREATE TABLE operations (
	id          TEXT PRIMARY KEY,
	vm_id       TEXT NOT NULL,
	kind        TEXT NOT NULL,
	step        TEXT NOT NULL DEFAULT '',
	state       TEXT NOT NULL,
	pid         INTEGER NOT NULL,
	pid_start   INTEGER NOT NULL,
	data        TEXT NOT NULL DEFAULT '{}',
	error       TEXT NOT NULL DEFAULT '',
	created_at  INTEGER NOT NULL,
	updated_at  INTEGER NOT NULL
);
CREATE INDEX operations_state ON operations(state);

CREATE TABLE domains (
	name        TEXT PRIMARY KEY,
	vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
	verified    INTEGER NOT NULL DEFAULT 0,
	token       TEXT NOT NULL,
	created_at  INTEGER NOT NULL
);

CREATE TABLE settings (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
