-- Operations (issue 17): a note on a VM that its state alone cannot say,
-- e.g. "disk missing: restored without disks" after `minions backup restore`
-- of a backup taken without --with-disks. Empty for every other VM.
ALTER TABLE vms ADD COLUMN note TEXT NOT NULL DEFAULT '';
