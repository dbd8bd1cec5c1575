-- Tenant isolation of the web proxy (issue 11).

-- web_gen is a VM's revocation counter: every link and session cookie
-- carries the value it was minted under, and the proxy admits it only while
-- the VM still has that value. share --private, rename and destroy bump it.
ALTER TABLE vms ADD COLUMN web_gen INTEGER NOT NULL DEFAULT 0;

-- One-time sign-in links already redeemed, kept until they expire so a
-- link cannot be used again after a daemon restart.
CREATE TABLE used_links (
	id          TEXT PRIMARY KEY,
	expires_at  INTEGER NOT NULL
);
CREATE INDEX used_links_expiry ON used_links(expires_at);

-- Custom domains: a name may be claimed by several VMs while unverified;
-- only a verified claim counts, and there is at most one per name.
-- Unverified claims lapse at expires_at (0 once verified). Claims verified
-- before this migration stay verified.
CREATE TABLE domains_v3 (
	name        TEXT NOT NULL,
	vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
	verified    INTEGER NOT NULL DEFAULT 0,
	token       TEXT NOT NULL,
	created_at  INTEGER NOT NULL,
	expires_at  INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (name, vm_id)
);
INSERT INTO domains_v3 (name, vm_id, verified, token, created_at, expires_at)
	SELECT name, vm_id, verified, token, created_at,
		CASE WHEN verified = 1 THEN 0 ELSE created_at + 72*3600*1000 END FROM domains;
DROP TABLE domains;
ALTER TABLE domains_v3 RENAME TO domains;
CREATE UNIQUE INDEX domains_verified_name ON domains(name) WHERE verified = 1;
CREATE INDEX domains_vm ON domains(vm_id);
