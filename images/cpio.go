package images

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Mode bits of cpio entries (as in stat(2)).
const (
	cpioTypeDir     = 0o040000
	cpioTypeReg     = 0o100000
	cpioTypeSymlink = 0o120000
	cpioTypeChar    = 0o020000
)

// CpioWriter writes a cpio archive in the "newc" format the Linux kernel
// unpacks as an initramfs. Entries are written as given (parents before
// children is the caller's job); owner is root and mtime is 0, so the same
// input gives byte-identical output. Close writes the trailer; it does not
// close the underlying writer. Not safe for concurrent use.
type CpioWriter struct {
	w   *bufio.Writer
	ino uint32
	off int64
	err error
}

// NewCpioWriter returns a writer appending to w.
func NewCpioWriter(w io.Writer) *CpioWriter {
	return &CpioWriter{w: bufio.NewWriterSize(w, 1<<20), ino: 1}
}

// Dir adds a directory.
func (c *CpioWriter) Dir(name string, perm uint32) error {
	return c.entry(name, cpioTypeDir|perm&0o7777, 2, 0, 0, nil, 0)
}

// File adds a regular file of size bytes read from r.
func (c *CpioWriter) File(name string, perm uint32, r io.Reader, size int64) error {
	return c.entry(name, cpioTypeReg|perm&0o7777, 1, 0, 0, r, size)
}

// Symlink adds a symbolic link to target.
func (c *CpioWriter) Symlink(name, target string) error {
	return c.entry(name, cpioTypeSymlink|0o777, 1, 0, 0, strings.NewReader(target), int64(len(target)))
}

// CharDev adds a character device node.
func (c *CpioWriter) CharDev(name string, perm uint32, major, minor uint32) error {
	return c.entry(name, cpioTypeChar|perm&0o7777, 1, major, minor, nil, 0)
}

// Close writes the trailer and flushes.
func (c *CpioWriter) Close() error {
	if c.err != nil {
		return c.err
	}
	if err := c.entry("TRAILER!!!", 0, 1, 0, 0, nil, 0); err != nil {
		return err
	}
	return c.w.Flush()
}

func (c *CpioWriter) entry(name string, mode, nlink, rmaj, rmin uint32, r io.Reader, size int64) error {
	if c.err != nil {
		return c.err
	}
	name = strings.TrimPrefix(name, "/")
	if name == "" || strings.Contains(name, "\x00") {
		return fmt.Errorf("cpio: bad name %q", name)
	}
	if size < 0 || size > 0xffffffff {
		return fmt.Errorf("cpio: %s: size %d out of range", name, size)
	}
	ino := c.ino
	if name == "TRAILER!!!" {
		ino = 0
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, rmaj, rmin, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad()
	if r != nil {
		n, err := io.CopyN(c.w, r, size)
		c.off += n
		if err != nil && c.err == nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			c.err = fmt.Errorf("cpio: %s: %w", name, err)
		}
		c.pad()
	}
	return c.err
}

func (c *CpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

func (c *CpioWriter) pad() {
	if p := (4 - c.off%4) % 4; p > 0 {
		c.write(make([]byte, p))
	}
}
