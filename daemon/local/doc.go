// Package local opens this host's installation in-process: the state and
// run directories, the store, the network manager, the hypervisor driver,
// the engine and the service, for one command of the host CLI (OpenLocal)
// and for the daemon, which builds its listeners on it (daemon.Open). It
// links none of the daemon's listeners (NATS, the HTTPS proxy, the SSH
// front door, the dashboard): the lean minions binary is built on it and
// hands every other command to minions-daemon (ExecDaemon).
package local
