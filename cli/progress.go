package cli

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/starttrace"
)

// progress shows the steps of a long operation: on a terminal one line that
// redraws with a spinner and the elapsed time, otherwise one plain line per
// step.
type progress struct {
	w     io.Writer
	tty   bool
	title string
	start time.Time

	mu      sync.Mutex
	current string
	stepAt  time.Time
	stop    chan struct{}
	stopped chan struct{}
}

func newProgress(w io.Writer, tty bool, title string) *progress {
	p := &progress{w: w, tty: tty, title: title, start: time.Now(), stop: make(chan struct{}), stopped: make(chan struct{})}
	if tty {
		go p.spin()
	} else {
		close(p.stopped)
	}
	return p
}

var spinner = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

func (p *progress) spin() {
	defer close(p.stopped)
	t := time.NewTicker(80 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		p.mu.Lock()
		if p.current != "" {
			fmt.Fprintf(p.w, "\r\033[K%s %s: %s %.1fs", spinner[i%len(spinner)], p.title, p.current, time.Since(p.start).Seconds())
		}
		p.mu.Unlock()
	}
}

func (p *progress) step(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	starttrace.Markf("%s: %s", p.title, name)
	if !p.tty {
		fmt.Fprintf(p.w, "%s: %s (%.2fs)\n", p.title, name, now.Sub(p.start).Seconds())
	} else if p.current != "" {
		fmt.Fprintf(p.w, "\r\033[K  ✓ %s %dms\n", p.current, now.Sub(p.stepAt).Milliseconds())
	}
	p.current, p.stepAt = name, now
}

func (p *progress) done(err error) {
	if p.tty {
		close(p.stop)
		<-p.stopped
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	total := time.Since(p.start).Seconds()
	switch {
	case err != nil && p.tty:
		fmt.Fprintf(p.w, "\r\033[K  ✗ %s\n", p.current)
	case p.tty:
		if p.current != "" {
			fmt.Fprintf(p.w, "\r\033[K  ✓ %s %dms\n", p.current, time.Since(p.stepAt).Milliseconds())
		}
		fmt.Fprintf(p.w, "%s: done in %.2fs\n", p.title, total)
	case err == nil:
		fmt.Fprintf(p.w, "%s: done (%.2fs)\n", p.title, total)
	}
}
