package disk

import (
	"encoding/binary"
	"fmt"
	"os"
)

// The qcow2 overlay CreateOverlay writes itself (instead of running
// qemu-img create, an exec of a large dynamically linked program on the
// path of every create): version 3, 64 KiB clusters, 16-bit refcounts, no
// data, the backing file and its format recorded. It is the layout
// qemu-img create gives such an image: cluster 0 the header, its
// extensions and the backing file name; cluster 1 the refcount table;
// cluster 2 its one refcount block; cluster 3 the L1 table (all zero: every
// read goes to the backing file).
const (
	qcowClusterBits = 16
	qcowCluster     = 1 << qcowClusterBits
	qcowHeaderLen   = 104 // version 3 header without optional fields
	// qcowMaxL1 is the L1 entries one cluster holds: each maps an L2
	// table of 8192 clusters (512 MiB), so 4 TiB of virtual disk.
	qcowMaxL1 = qcowCluster / 8
	// qcowMaxBacking is qemu's limit on a backing file name.
	qcowMaxBacking = 1023
	// Header extension types.
	qcowExtEnd           = 0
	qcowExtBackingFormat = 0xe2792aca
)

// nativeOverlayOK reports whether writeOverlay can make this overlay (it
// falls back to qemu-img otherwise): a size in whole 512-byte sectors of
// at most 4 TiB and a backing name that fits in the header cluster.
func nativeOverlayOK(backing, backingFmt string, size int64) bool {
	return size > 0 && size%512 == 0 && l1Entries(size) <= qcowMaxL1 &&
		len(backing) <= qcowMaxBacking && len(backingFmt) <= 16
}

// l1Entries is the L1 table size for a virtual size.
func l1Entries(size int64) int64 {
	per := int64(qcowCluster) * (qcowCluster / 8) // bytes one L2 table maps
	return (size + per - 1) / per
}

// writeOverlay writes an empty qcow2 overlay of size bytes backed by
// backing (backingFmt) into f, which must be empty. The caller checks
// nativeOverlayOK first.
func writeOverlay(f *os.File, backing, backingFmt string, size int64) error {
	const (
		refTable = 1 * qcowCluster
		refBlock = 2 * qcowCluster
		l1Table  = 3 * qcowCluster
		clusters = 4
	)
	be := binary.BigEndian
	hdr := make([]byte, qcowCluster)
	copy(hdr[0:4], "QFI\xfb")
	be.PutUint32(hdr[4:], 3) // version
	be.PutUint32(hdr[20:], qcowClusterBits)
	be.PutUint64(hdr[24:], uint64(size))
	be.PutUint32(hdr[36:], uint32(l1Entries(size)))
	be.PutUint64(hdr[40:], l1Table)
	be.PutUint64(hdr[48:], refTable)
	be.PutUint32(hdr[56:], 1) // refcount table clusters
	be.PutUint32(hdr[96:], 4) // refcount order: 16-bit refcounts
	be.PutUint32(hdr[100:], qcowHeaderLen)
	// Extensions: the backing format (padded to 8 bytes), then the end.
	off := qcowHeaderLen
	be.PutUint32(hdr[off:], qcowExtBackingFormat)
	be.PutUint32(hdr[off+4:], uint32(len(backingFmt)))
	copy(hdr[off+8:], backingFmt)
	off += 8 + (len(backingFmt)+7)/8*8
	be.PutUint32(hdr[off:], qcowExtEnd)
	off += 8
	// The backing file name, not terminated.
	be.PutUint64(hdr[8:], uint64(off))
	be.PutUint32(hdr[16:], uint32(len(backing)))
	copy(hdr[off:], backing)
	end := off + len(backing)
	if end > qcowCluster {
		return fmt.Errorf("qcow2 header: backing name too long")
	}
	if _, err := f.WriteAt(hdr[:end], 0); err != nil {
		return err
	}
	var entry [8]byte
	be.PutUint64(entry[:], refBlock)
	if _, err := f.WriteAt(entry[:], refTable); err != nil {
		return err
	}
	counts := make([]byte, 2*clusters) // each cluster used once
	for i := range clusters {
		be.PutUint16(counts[2*i:], 1)
	}
	if _, err := f.WriteAt(counts, refBlock); err != nil {
		return err
	}
	// The L1 table is all zeroes: a hole up to the end of its cluster.
	return f.Truncate(clusters * qcowCluster)
}
