-- Per-host subnets (issue 14): each joined host's bridge gets its own
-- subnet (a /24 carved from the cluster range, config cluster_subnet),
-- assigned at join and kept until the host is removed (deleting the row
-- frees it). '' for the control plane's own host (it keeps its configured
-- subnet) and for hosts that have not joined.
ALTER TABLE hosts ADD COLUMN subnet TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX hosts_subnet ON hosts(subnet) WHERE subnet != '';
