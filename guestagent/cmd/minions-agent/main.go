// Command minions-agent is the Minions guest agent. As PID 1 of an
// initramfs holding /etc/minions/modules it is stage 1 (load modules,
// switch root); as PID 1 of the minimal image it is init and agent; under
// another init (a systemd unit in full images) it is only the agent.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/minionsdev/minions/guestagent"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "--version" || os.Args[1] == "version") {
		fmt.Println(guestagent.Version)
		return
	}
	pid1 := os.Getpid() == 1
	if pid1 {
		if _, err := os.Stat("/etc/minions/modules"); err == nil {
			err := guestagent.Stage1()
			guestagent.Console("minions-agent: %v", err)
			guestagent.PowerOff(false, 0)
			select {}
		}
	}
	level := slog.LevelInfo
	if b, err := os.ReadFile("/proc/cmdline"); err == nil && strings.Contains(string(b), "minions.debug") {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("component", "agent")

	ctx := context.Background()
	if !pid1 {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
		defer stop()
	}
	err := guestagent.Run(ctx, guestagent.Options{PID1: pid1, Log: log})
	if pid1 {
		// Run only returns as PID 1 when it cannot serve or powers off.
		guestagent.Console("minions-agent: %v", err)
		guestagent.PowerOff(false, 2*time.Second)
		select {}
	}
	if err != nil {
		log.Error("agent", "err", err)
		os.Exit(1)
	}
}
