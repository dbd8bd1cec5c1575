-- The kind of a move under way (issue 15): 'cold' (stopped, disk shipped),
-- 'memory' (suspended with memory, resumed on the target) or 'live' (QEMU
-- live migration). Settling a crashed move depends on it.
ALTER TABLE vm_moves ADD COLUMN mode TEXT NOT NULL DEFAULT 'cold';
