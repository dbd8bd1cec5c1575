package cloudhypervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"

	"github.com/minionsdev/minions/internal/errs"
)

// The request and response bodies of the REST API, named after the schemas
// in Cloud Hypervisor's OpenAPI document. Only the fields the driver uses
// are present; optional ones are omitted when zero.

// VMConfig is the VmConfig schema (vm.create).
type VMConfig struct {
	Payload PayloadConfig  `json:"payload"`
	CPUs    *CPUsConfig    `json:"cpus,omitempty"`
	Memory  *MemoryConfig  `json:"memory,omitempty"`
	Disks   []DiskConfig   `json:"disks,omitempty"`
	Net     []NetConfig    `json:"net,omitempty"`
	RNG     *RNGConfig     `json:"rng,omitempty"`
	Serial  *ConsoleConfig `json:"serial,omitempty"`
	Console *ConsoleConfig `json:"console,omitempty"`
	Vsock   *VsockConfig   `json:"vsock,omitempty"`
}

// PayloadConfig is what the VM boots.
type PayloadConfig struct {
	Kernel    string `json:"kernel,omitempty"`
	Cmdline   string `json:"cmdline,omitempty"`
	Initramfs string `json:"initramfs,omitempty"`
}

// CPUsConfig: boot vCPUs and the hotplug ceiling.
type CPUsConfig struct {
	BootVCPUs int `json:"boot_vcpus"`
	MaxVCPUs  int `json:"max_vcpus"`
}

// MemoryConfig sizes are in bytes.
type MemoryConfig struct {
	Size        int64 `json:"size"`
	HotplugSize int64 `json:"hotplug_size,omitempty"`
	// HotpluggedSize is reported by vm.info after a resize.
	HotpluggedSize int64 `json:"hotplugged_size,omitempty"`
}

// DiskConfig is one virtio-blk disk.
type DiskConfig struct {
	ID       string `json:"id,omitempty"`
	Path     string `json:"path"`
	Readonly bool   `json:"readonly,omitempty"`
	// BackingFiles must be on for a qcow2 overlay with a backing file.
	BackingFiles bool   `json:"backing_files,omitempty"`
	ImageType    string `json:"image_type,omitempty"` // "Qcow2" or "Raw"
}

// NetConfig is a virtio-net device on an existing TAP.
type NetConfig struct {
	ID  string `json:"id,omitempty"`
	TAP string `json:"tap"`
	MAC string `json:"mac,omitempty"`
}

// RNGConfig is the virtio-rng source.
type RNGConfig struct {
	Src string `json:"src"`
}

// ConsoleConfig is the SerialConfig / ConsoleConfig schema.
type ConsoleConfig struct {
	Mode string `json:"mode"` // "Off", "File", ...
	File string `json:"file,omitempty"`
}

// VsockConfig is the virtio-vsock device with its hybrid unix socket.
type VsockConfig struct {
	CID    int64  `json:"cid"`
	Socket string `json:"socket"`
}

// VMResize is the vm.resize body; nil fields are left unchanged.
type VMResize struct {
	DesiredVCPUs *int   `json:"desired_vcpus,omitempty"`
	DesiredRAM   *int64 `json:"desired_ram,omitempty"`
}

// VMResizeDisk is the vm.resize-disk body.
type VMResizeDisk struct {
	ID          string `json:"id"`
	DesiredSize int64  `json:"desired_size"`
}

// VMSnapshotConfig is the vm.snapshot body.
type VMSnapshotConfig struct {
	DestinationURL string `json:"destination_url"`
}

// RestoreConfig is the vm.restore body.
type RestoreConfig struct {
	SourceURL string `json:"source_url"`
}

// VMInfo is the vm.info response.
type VMInfo struct {
	Config           VMConfig `json:"config"`
	State            string   `json:"state"` // Created, Running, Shutdown, Paused, BreakPoint
	MemoryActualSize int64    `json:"memory_actual_size,omitempty"`
}

// VMMPingResponse is the vmm.ping response.
type VMMPingResponse struct {
	Version string `json:"version"`
	PID     int64  `json:"pid,omitempty"`
}

// client talks to one VMM's API socket.
type client struct {
	socket string
	http   *http.Client
}

func newClient(socket string) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true, // one VMM, few calls; never hold its socket open
	}
	return &client{socket: socket, http: &http.Client{Transport: tr}}
}

// APIError is a non-2xx answer of the API.
type APIError struct {
	Endpoint string
	Status   int
	Body     string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("cloud-hypervisor %s: http %d: %s", e.Endpoint, e.Status, e.Body)
}

// do sends one request; in (if not nil) is the JSON body, out (if not nil)
// receives the JSON answer. Errors carry a class: an unreachable API is
// errs.Unavailable; 404 and 405 (no VM, wrong state) are
// errs.FailedPrecondition; 400 is errs.InvalidArgument; 429 is
// errs.Unavailable.
func (c *client) do(ctx context.Context, method, endpoint string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("cloud-hypervisor %s: encode: %w", endpoint, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost/api/v1/"+endpoint, body)
	if err != nil {
		return fmt.Errorf("cloud-hypervisor %s: %w", endpoint, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() == nil && isUnreachable(err) {
			return errs.New(errs.Unavailable, "cloud-hypervisor %s: api socket %s: %w", endpoint, c.socket, err)
		}
		return fmt.Errorf("cloud-hypervisor %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("cloud-hypervisor %s: read answer: %w", endpoint, err)
	}
	if resp.StatusCode/100 != 2 {
		ae := &APIError{Endpoint: endpoint, Status: resp.StatusCode, Body: strings.TrimSpace(string(data))}
		switch resp.StatusCode {
		case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusConflict:
			return errs.New(errs.FailedPrecondition, "%w", ae)
		case http.StatusBadRequest:
			return errs.New(errs.InvalidArgument, "%w", ae)
		case http.StatusTooManyRequests:
			return errs.New(errs.Unavailable, "%w", ae)
		}
		return ae
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("cloud-hypervisor %s: decode answer: %w", endpoint, err)
		}
	}
	return nil
}

func (c *client) put(ctx context.Context, endpoint string, in any) error {
	return c.do(ctx, http.MethodPut, endpoint, in, nil)
}

func (c *client) ping(ctx context.Context) (VMMPingResponse, error) {
	var r VMMPingResponse
	err := c.do(ctx, http.MethodGet, "vmm.ping", nil, &r)
	return r, err
}

func (c *client) info(ctx context.Context) (VMInfo, error) {
	var r VMInfo
	err := c.do(ctx, http.MethodGet, "vm.info", nil, &r)
	return r, err
}

func isUnreachable(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) ||
		errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)
}
