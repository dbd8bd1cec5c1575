package engine

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

func TestDiskStreamRoundTripAndRefusals(t *testing.T) {
	disk := bytes.Repeat([]byte("minions disk "), 100000)
	h := DiskHeader{ID: vm.NewID(), Name: "web", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Size: int64(len(disk))}
	var s bytes.Buffer
	if err := WriteDiskStream(&s, h, bytes.NewReader(disk)); err != nil {
		t.Fatal(err)
	}
	read := func(b []byte) ([]byte, error) {
		br := bufio.NewReaderSize(bytes.NewReader(b), maxDiskHeader)
		got, err := ReadDiskHeader(br)
		if err != nil {
			return nil, err
		}
		if got.ID != h.ID || got.Size != h.Size || got.Image != h.Image {
			t.Fatalf("header %+v, want %+v", got, h)
		}
		var out bytes.Buffer
		err = ReadDiskBody(br, got, &out)
		return out.Bytes(), err
	}
	got, err := read(s.Bytes())
	if err != nil || !bytes.Equal(got, disk) {
		t.Fatalf("round trip: %d bytes, %v", len(got), err)
	}
	// One flipped byte in the disk.
	bad := bytes.Clone(s.Bytes())
	bad[len(bad)/2] ^= 1
	if _, err := read(bad); errs.ClassOf(err) != errs.InvalidArgument {
		t.Errorf("corrupt stream: %v, want InvalidArgument", err)
	}
	// Cut short: in the disk, and in the trailer.
	for _, cut := range []int{len(s.Bytes()) / 2, len(s.Bytes()) - 5} {
		if _, err := read(s.Bytes()[:cut]); errs.ClassOf(err) != errs.InvalidArgument {
			t.Errorf("stream cut at %d: %v, want InvalidArgument", cut, err)
		}
	}
	// A disk shorter than its header says cannot be written.
	h2 := h
	h2.Size++
	if err := WriteDiskStream(&bytes.Buffer{}, h2, bytes.NewReader(disk)); err == nil {
		t.Error("short disk written")
	}
}

// TestStageAndAdopt: a disk staged for the row of a VM recorded on another
// host (in this shared store) becomes this host's stopped instance when
// adopted, with an address of this host; a corrupt stream leaves nothing,
// and an instance of this host is never overwritten.
func TestStageAndAdopt(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	db := fx.eng.DB
	if err := store.InsertUser(ctx, db, store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertHost(ctx, db, store.Host{ID: vm.NewID(), Name: "node-b", State: store.HostReady, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	hb, _ := store.GetHostByName(ctx, db, "node-b")
	row := store.VM{ID: vm.NewID(), Name: "away", OwnerID: "u1", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		State: vm.Stopped, Port: 80, HostID: hb.ID, NodeIP: "10.9.0.5", CreatedAt: time.Now()}
	if err := store.RemotePlaceholders(ctx, db, &row); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertVM(ctx, db, row); err != nil {
		t.Fatal(err)
	}
	disk := []byte("the disk of away")
	stream := func(id string) []byte {
		var b bytes.Buffer
		h := DiskHeader{ID: id, Name: "away", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Size: int64(len(disk))}
		if err := WriteDiskStream(&b, h, bytes.NewReader(disk)); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	spec := ImportSpec{ID: row.ID, Name: "away", Owner: "u1"}
	bad := stream(row.ID)
	bad[len(bad)-crc32.Size-3] ^= 1 // in the disk's bytes
	if err := fx.eng.StageDisk(ctx, spec, bytes.NewReader(bad), nil); errs.ClassOf(err) != errs.InvalidArgument {
		t.Fatalf("stage a corrupt stream: %v", err)
	}
	if _, err := os.Stat(fx.eng.vmDir(row.ID)); !os.IsNotExist(err) {
		t.Fatalf("a corrupt stage left files: %v", err)
	}
	if err := fx.eng.StageDisk(ctx, spec, bytes.NewReader(stream(row.ID)), nil); err != nil {
		t.Fatalf("stage: %v", err)
	}
	if _, err := fx.eng.Get(ctx, row.ID); errs.ClassOf(err) != errs.NotFound {
		t.Fatalf("a staged disk is an instance already: %v", err)
	}
	if err := db.Tx(ctx, func(q store.Q) error { return fx.eng.AdoptVM(ctx, q, row.ID) }); err != nil {
		t.Fatalf("adopt: %v", err)
	}
	inst, err := fx.eng.Get(ctx, row.ID)
	if err != nil || inst.State != vm.Stopped || strings.HasPrefix(inst.IP, "@") || inst.IP == "" || inst.Name != "away" {
		t.Fatalf("adopted %+v, %v", inst, err)
	}
	if got, _ := os.ReadFile(fx.eng.diskPath(row.ID)); !bytes.Equal(got, disk) {
		t.Errorf("adopted disk %q", got)
	}
	// This host's own instance is never overwritten.
	if err := fx.eng.StageDisk(ctx, spec, bytes.NewReader(stream(row.ID)), nil); errs.ClassOf(err) != errs.AlreadyExists {
		t.Fatalf("stage over this host's instance: %v", err)
	}
	if got, _ := os.ReadFile(fx.eng.diskPath(row.ID)); !bytes.Equal(got, disk) {
		t.Errorf("disk changed by a refused stage")
	}
}

// readStream reads a whole disk stream: header and body.
func readStream(b []byte) (DiskHeader, []byte, error) {
	br := bufio.NewReaderSize(bytes.NewReader(b), maxDiskHeader)
	h, err := ReadDiskHeader(br)
	if err != nil {
		return h, nil, err
	}
	var out bytes.Buffer
	err = ReadDiskBody(br, h, &out)
	return h, out.Bytes(), err
}

// oldStream is a disk stream as version 1 wrote it: no checksum named,
// a SHA-256 trailer.
func oldStream(t *testing.T, h DiskHeader, disk []byte) []byte {
	t.Helper()
	h.Version, h.Checksum = 1, ""
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(disk)
	return append(append(append(b, '\n'), disk...), sum[:]...)
}

// TestDiskStreamChecksums: streams are written with CRC32C (4-byte
// trailer) by default; whatever the algorithm (CRC32C, SHA-256 named,
// a version 1 stream's unnamed SHA-256), one flipped bit anywhere in the
// disk's bytes or the trailer, a stream cut short, and a size that does
// not match the bytes are refused; headers naming no checksum, an
// unknown one, or one their version did not have are refused.
func TestDiskStreamChecksums(t *testing.T) {
	disk := make([]byte, 3*DiskStreamBuffer+12345) // several chunks, a partial last
	for i := range disk {
		disk[i] = byte(i*7 + i>>13)
	}
	h := DiskHeader{ID: vm.NewID(), Name: "web", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Size: int64(len(disk))}
	write := func(h DiskHeader) []byte {
		var s bytes.Buffer
		if err := WriteDiskStream(&s, h, bytes.NewReader(disk)); err != nil {
			t.Fatal(err)
		}
		return s.Bytes()
	}
	crc := crc32.Checksum(disk, crc32.MakeTable(crc32.Castagnoli))
	sha := sha256.Sum256(disk)
	hs := h
	hs.Checksum = ChecksumSHA256
	for _, tc := range []struct {
		name    string
		stream  []byte
		version int
		sum     string
		trailer []byte
	}{
		{"default-crc32c", write(h), DiskStreamVersion, ChecksumCRC32C, binary.BigEndian.AppendUint32(nil, crc)},
		{"sha256-named", write(hs), DiskStreamVersion, ChecksumSHA256, sha[:]},
		{"version-1", oldStream(t, h, disk), 1, "", sha[:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.stream
			got, body, err := readStream(s)
			if err != nil || !bytes.Equal(body, disk) {
				t.Fatalf("round trip: %d bytes, %v", len(body), err)
			}
			if got.Version != tc.version || got.Checksum != tc.sum {
				t.Errorf("header version %d checksum %q, want %d %q", got.Version, got.Checksum, tc.version, tc.sum)
			}
			if !bytes.HasSuffix(s, tc.trailer) || len(s) != bytes.IndexByte(s, '\n')+1+len(disk)+len(tc.trailer) {
				t.Fatalf("trailer %x, want %x", s[len(s)-len(tc.trailer):], tc.trailer)
			}
			start := bytes.IndexByte(s, '\n') + 1
			// One bit flipped: first, middle (a chunk boundary and
			// beside it), last byte of the disk, and in the trailer.
			for _, at := range []int{start, start + DiskStreamBuffer - 1, start + DiskStreamBuffer, start + len(disk)/2,
				start + len(disk) - 1, len(s) - 1, len(s) - len(tc.trailer)} {
				for _, bit := range []byte{1, 0x80} {
					bad := bytes.Clone(s)
					bad[at] ^= bit
					if _, _, err := readStream(bad); errs.ClassOf(err) != errs.InvalidArgument {
						t.Errorf("bit %#x flipped at %d of %d: %v, want InvalidArgument", bit, at, len(s), err)
					}
				}
			}
			// Two bytes swapped in the disk (a misplaced write).
			bad := bytes.Clone(s)
			bad[start+10], bad[start+DiskStreamBuffer+10] = bad[start+DiskStreamBuffer+10], bad[start+10]
			if bad[start+10] == s[start+10] {
				t.Fatal("the swapped bytes are equal")
			}
			if _, _, err := readStream(bad); errs.ClassOf(err) != errs.InvalidArgument {
				t.Errorf("swapped bytes: %v, want InvalidArgument", err)
			}
			// Cut short: in the disk, at its end, in the trailer.
			for _, cut := range []int{start + len(disk)/2, start + len(disk), len(s) - 1} {
				if _, _, err := readStream(s[:cut]); errs.ClassOf(err) != errs.InvalidArgument {
					t.Errorf("stream cut at %d of %d: %v, want InvalidArgument", cut, len(s), err)
				}
			}
		})
	}
	t.Run("size-mismatch", func(t *testing.T) {
		// A disk shorter than its header says is not written.
		long := h
		long.Size++
		var s bytes.Buffer
		if err := WriteDiskStream(&s, long, bytes.NewReader(disk)); err == nil || !strings.Contains(err.Error(), "bytes to send") {
			t.Errorf("a disk 1 byte short written: %v", err)
		}
		// A header whose size is not the bytes': one more byte than
		// there are (the trailer's first byte read as the disk's) and one
		// fewer (the disk's last byte read as the trailer's).
		for _, d := range []int64{1, -1} {
			hh := h
			hh.Size += d
			b, _ := json.Marshal(DiskHeader{Version: DiskStreamVersion, Checksum: ChecksumCRC32C, ID: hh.ID, Name: hh.Name,
				Image: hh.Image, CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Size: hh.Size})
			s := append(append(append(b, '\n'), disk...), binary.BigEndian.AppendUint32(nil, crc)...)
			if _, _, err := readStream(s); errs.ClassOf(err) != errs.InvalidArgument {
				t.Errorf("header size %+d: %v, want InvalidArgument", d, err)
			}
		}
	})
	t.Run("header-refusals", func(t *testing.T) {
		for _, tc := range []struct {
			version int
			sum     string
		}{
			{DiskStreamVersion, ""},     // names none
			{DiskStreamVersion, "md5"},  // unknown
			{1, ChecksumCRC32C},         // version 1 had SHA-256 only
			{DiskStreamVersion + 1, ""}, // a newer format
			{DiskStreamVersion + 1, ChecksumCRC32C},
			{0, ""},
		} {
			b, _ := json.Marshal(DiskHeader{Version: tc.version, Checksum: tc.sum, ID: h.ID, Size: 1})
			br := bufio.NewReader(bytes.NewReader(append(b, "\nx1234"...)))
			if _, err := ReadDiskHeader(br); errs.ClassOf(err) != errs.InvalidArgument {
				t.Errorf("version %d checksum %q: %v, want InvalidArgument", tc.version, tc.sum, err)
			}
		}
		hh := h
		hh.Checksum = "md5"
		if err := WriteDiskStream(io.Discard, hh, bytes.NewReader(disk)); errs.ClassOf(err) != errs.InvalidArgument {
			t.Errorf("write with checksum md5: %v", err)
		}
	})
}

// TestResumedStreamChecksum: a stream resumed part-way (the first bytes
// hashed, not sent) carries the trailer of the whole disk, in the same
// algorithm as a whole stream.
func TestResumedStreamChecksum(t *testing.T) {
	disk := bytes.Repeat([]byte("resumed "), 300000)
	h := DiskHeader{ID: vm.NewID(), Size: int64(len(disk))}
	var whole, part bytes.Buffer
	if err := WriteDiskStream(&whole, h, bytes.NewReader(disk)); err != nil {
		t.Fatal(err)
	}
	const off = 1<<20 + 3
	if err := WriteDiskStreamFrom(&part, h, bytes.NewReader(disk), off); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(&part)
	ph, err := ReadDiskHeader(br)
	if err != nil || ph.Offset != off || ph.Checksum != StreamChecksum {
		t.Fatalf("resumed header %+v, %v", ph, err)
	}
	rest, _ := io.ReadAll(br)
	if !bytes.Equal(rest, whole.Bytes()[whole.Len()-len(rest):]) || len(rest) != len(disk)-off+crc32.Size {
		t.Fatalf("the resumed stream's %d bytes are not the whole stream's last ones", len(rest))
	}
}

// TestBundleChecksums: bundles are written with CRC32C trailers; a
// version 2 bundle (SHA-256, no checksum named) still reads; a flipped
// bit in any file's bytes is refused and leaves no file.
func TestBundleChecksums(t *testing.T) {
	files := map[string][]byte{
		"disk.qcow2":            bytes.Repeat([]byte("disk "), 400000),
		moveStateDir + "/state": []byte("device state"),
		moveStateDir + "/empty": nil,
	}
	h := BundleHeader{ID: vm.NewID(), Name: "web", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Memory: true,
		Files: []BundleFile{{Path: "disk.qcow2"}, {Path: moveStateDir + "/state"}, {Path: moveStateDir + "/empty"}}}
	for i := range h.Files {
		h.Files[i].Size = int64(len(files[h.Files[i].Path]))
	}
	var cur bytes.Buffer
	if err := WriteBundle(&cur, h, func(p string) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(files[p])), nil }); err != nil {
		t.Fatal(err)
	}
	// Version 2, as the engine before this one wrote it.
	old := h
	old.Version = 2
	hb, _ := json.Marshal(old)
	v2 := append(hb, '\n')
	for _, f := range h.Files {
		sum := sha256.Sum256(files[f.Path])
		v2 = append(append(v2, files[f.Path]...), sum[:]...)
	}
	read := func(b []byte) (BundleHeader, string, error) {
		dir := t.TempDir()
		br := bufio.NewReaderSize(bytes.NewReader(b), maxDiskHeader)
		got, err := ReadBundleHeader(br)
		if err != nil {
			return got, dir, err
		}
		return got, dir, ReadBundleFiles(br, got, dir)
	}
	for _, tc := range []struct {
		name    string
		b       []byte
		version int
		sum     string
		tsize   int
	}{
		{"current", cur.Bytes(), BundleStreamVersion, ChecksumCRC32C, crc32.Size},
		{"version-2", v2, 2, "", sha256.Size},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, dir, err := read(tc.b)
			if err != nil || got.Version != tc.version || got.Checksum != tc.sum {
				t.Fatalf("read: %+v, %v", got, err)
			}
			for p, want := range files {
				if b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(p))); err != nil || !bytes.Equal(b, want) {
					t.Errorf("%s: %d bytes, %v", p, len(b), err)
				}
			}
			start := bytes.IndexByte(tc.b, '\n') + 1
			diskLen := len(files["disk.qcow2"])
			stateAt := start + diskLen + tc.tsize
			if len(tc.b) != stateAt+len(files[moveStateDir+"/state"])+2*tc.tsize {
				t.Fatalf("bundle of %d bytes: trailers are not %d bytes", len(tc.b), tc.tsize)
			}
			for _, at := range []int{start, start + diskLen - 1, start + diskLen, stateAt, len(tc.b) - 1} {
				bad := bytes.Clone(tc.b)
				bad[at] ^= 4
				_, dir, err := read(bad)
				if errs.ClassOf(err) != errs.InvalidArgument {
					t.Errorf("bit flipped at %d: %v, want InvalidArgument", at, err)
				}
				// Files before the bad one are kept (the importer
				// removes the directory); the bad one never lands.
				if at < stateAt {
					if _, err := os.Stat(filepath.Join(dir, "disk.qcow2")); !os.IsNotExist(err) {
						t.Errorf("bit flipped at %d: the bad disk landed (%v)", at, err)
					}
				}
			}
		})
	}
	bad := h
	bad.Version, bad.Checksum = 2, ChecksumCRC32C
	hb, _ = json.Marshal(bad)
	if _, err := ReadBundleHeader(bufio.NewReader(bytes.NewReader(append(hb, '\n')))); errs.ClassOf(err) != errs.InvalidArgument {
		t.Errorf("a version 2 bundle naming crc32c: %v", err)
	}
}

// TestImportSyncsTheDisk: an import (ImportDisk, StageDisk) syncs the
// disk it wrote once all of its bytes are in the file and before it puts
// it in place; a failed sync fails the import and leaves nothing.
func TestImportSyncsTheDisk(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	if err := store.InsertUser(ctx, fx.eng.DB, store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	disk := bytes.Repeat([]byte("durable "), 300000) // 2.3 MiB: an O_DIRECT chunk is 4 MiB
	disk = append(disk, bytes.Repeat([]byte{7}, DirectChunk)...)
	stream := func(id string) []byte {
		var b bytes.Buffer
		h := DiskHeader{ID: id, Name: "kept", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Size: int64(len(disk))}
		if err := WriteDiskStream(&b, h, bytes.NewReader(disk)); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	defer func(f func(*os.File) error) { datasync = f }(datasync)
	var synced []int64
	fail := false
	datasync = func(f *os.File) error {
		st, err := f.Stat()
		if err != nil {
			return err
		}
		synced = append(synced, st.Size())
		if fail {
			return errors.New("injected sync failure")
		}
		return unix.Fdatasync(int(f.Fd()))
	}
	for _, stage := range []bool{false, true} {
		id := vm.NewID()
		spec := ImportSpec{ID: id, Name: "kept", Owner: "u1"}
		imp := func() error {
			if stage {
				return fx.eng.StageDisk(ctx, spec, bytes.NewReader(stream(id)), nil)
			}
			_, err := fx.eng.ImportDisk(ctx, spec, bytes.NewReader(stream(id)), nil)
			return err
		}
		synced, fail = nil, false
		if err := imp(); err != nil {
			t.Fatalf("stage %v: import: %v", stage, err)
		}
		if len(synced) != 1 || synced[0] != int64(len(disk)) {
			t.Fatalf("stage %v: synced at sizes %v, want once at %d (all of the disk)", stage, synced, len(disk))
		}
		if got, _ := os.ReadFile(fx.eng.diskPath(id)); !bytes.Equal(got, disk) {
			t.Fatalf("stage %v: the disk in place is not the stream's", stage)
		}
		// A sync that fails: the import fails and keeps nothing.
		id = vm.NewID()
		spec = ImportSpec{ID: id, Name: "lost", Owner: "u1"}
		fail = true
		if err := imp(); err == nil || !strings.Contains(err.Error(), "injected sync failure") {
			t.Fatalf("stage %v: import with a failing sync: %v", stage, err)
		}
		if _, err := os.Stat(fx.eng.vmDir(id)); !os.IsNotExist(err) {
			t.Errorf("stage %v: a failed import left files: %v", stage, err)
		}
		if _, err := fx.eng.Get(ctx, id); errs.ClassOf(err) != errs.NotFound {
			t.Errorf("stage %v: a failed import left an instance: %v", stage, err)
		}
	}
}
