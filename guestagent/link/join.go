package link

import (
	"encoding/binary"
	"io"
)

// frameJoiner makes each yamux data frame one write: yamux writes a frame's
// 12-byte header and its body separately, and on a virtio-serial port every
// write is a trip through the hypervisor (expensive under emulation), so
// the header of a data frame with a body is held until the body comes.
// yamux's send loop is the only writer of a session's connection, so no
// locking is needed.
type frameJoiner struct {
	io.ReadWriteCloser
	held []byte
}

const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

func joinFrames(rwc io.ReadWriteCloser) io.ReadWriteCloser { return &frameJoiner{ReadWriteCloser: rwc} }

func (j *frameJoiner) Write(p []byte) (int, error) {
	if j.held != nil {
		buf := append(j.held, p...)
		j.held = nil
		if _, err := j.ReadWriteCloser.Write(buf); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if len(p) == yamuxHeaderSize && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:12]) > 0 {
		j.held = append(make([]byte, 0, yamuxHeaderSize+64<<10), p...)
		return len(p), nil
	}
	return j.ReadWriteCloser.Write(p)
}
