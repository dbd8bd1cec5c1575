// Package iocount counts the bytes that pass through a reader or a
// writer into an atomic counter, which another goroutine may read while
// they flow (progress lines, transfer figures).
package iocount

import (
	"io"
	"sync/atomic"
)

// Reader is R, counting the bytes read through it into N.
type Reader struct {
	R io.Reader
	N *atomic.Int64
}

func (c Reader) Read(p []byte) (int, error) {
	k, err := c.R.Read(p)
	c.N.Add(int64(k))
	return k, err
}

// Writer is W, counting the bytes written through it into N.
type Writer struct {
	W io.Writer
	N *atomic.Int64
}

func (c Writer) Write(p []byte) (int, error) {
	k, err := c.W.Write(p)
	c.N.Add(int64(k))
	return k, err
}
