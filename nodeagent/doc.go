// Package nodeagent is the host side of the cluster: the agent each node
// runs (`minions node`, and in-process inside `minions serve` for the
// control plane's own host) and its counterpart in the control plane.
//
// Today it registers the node and heartbeats its capacity (vCPUs, memory,
// disk free) and version over the fabric (package fabric) every
// Config.Interval; Listen is the control plane's receiver. It is the
// package that will carry the per-host Engine over NATS: a server on each
// node answering on fabric.NodeSubject(id), and a client in the control
// plane implementing the same Engine interface as the local engine. No VM
// operation is served yet.
package nodeagent
