package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// The engine's subjects, under the node's own roots (so the fabric's
// per-node permissions confine them):
//
//	minions.node.<id>.engine.<method>    a call (request: callRequest);
//	                                     the node answers "accepted" at once
//	minions.node.<id>.engine.cancel      the caller gave up on a call
//	minions.node.<id>.engine.alive       is a call still running?
//	minions.status.<id>.engine.reply.<c> progress steps, then the result
//	                                     of call c (callFrame)
//	minions.status.<id>.engine.exit      an engine.Exit (OnExit)
//	minions.node.<id>.stream.<s>         agent stream s, control -> node
//	minions.status.<id>.stream.<s>       agent stream s, node -> control
//
// Replies ride the node's status subjects, which only that node may
// publish on: a reply is from the node it claims, and a long call is not
// bound by the one-minute, one-message response permission of a request.
func engineSubject(id, method string) string { return fabric.NodeSubject(id) + ".engine." + method }
func engineEvents(id string) string          { return fabric.StatusSubject(id) + ".engine.>" }
func replySubject(id, call string) string    { return fabric.StatusSubject(id) + ".engine.reply." + call }
func exitSubject(id string) string           { return fabric.StatusSubject(id) + ".engine.exit" }
func streamIn(id, s string) string           { return fabric.NodeSubject(id) + ".stream." + s }
func streamOut(id, s string) string          { return fabric.StatusSubject(id) + ".stream." + s }

// Method names (the last token of the call subject).
const (
	mCreate          = "create"
	mStart           = "start"
	mStop            = "stop"
	mRestart         = "restart"
	mDestroy         = "destroy"
	mRename          = "rename"
	mResize          = "resize"
	mSnapshot        = "snapshot"
	mSnapshots       = "snapshots"
	mRestoreSnapshot = "restore_snapshot"
	mDeleteSnapshot  = "delete_snapshot"
	mGet             = "get"
	mList            = "list"
	mReconcile       = "reconcile"
	mReattachPorts   = "reattach_ports"
	mCapacity        = "capacity"
	mDialAgent       = "dial_agent"
	mAgentKey        = "agent_key"
	mConsoleLog      = "console_log"
	mAgentPubKey     = "agent_pubkey"  // the key the node's agents trust (sign.go)
	mAgentSign       = "agent_sign"    // sign an agent login (sign.go)
	mConsole         = "console"       // copy the console log into a stream (console.go)
	mDirectTicket    = "direct_ticket" // a one-time ticket for a direct stream (direct.go)
	mDirectCert      = "direct_cert"   // the node's direct certificate's fingerprint (transfer_peer.go)
	mExportDisk      = "export_disk"   // write a disk stream into a stream (transfer.go)
	mImportDisk      = "import_disk"   // make an instance from a stream (transfer.go)
	mLiveDescribe    = "live_describe" // engine.LiveMigrator (live.go)
	mLivePrepare     = "live_prepare"
	mLiveDial        = "live_dial"
	mLiveMigrate     = "live_migrate"
	mLiveFinish      = "live_finish"
	mLiveAbort       = "live_abort"
	mLiveResume      = "live_resume"
	mCancel          = "cancel"
	mAlive           = "alive"         // is call c still running? "yes" or "no"
	mTemplates       = "templates"     // engine.TemplateKeeper (the node's warm templates)
	mWarmTemplate    = "warm_template" // build one (Warm)
	mFork            = "fork"          // engine.Forker: fork instance ID (ForkSpec)
	// cancel_moves: cancel the calls in flight that move instance ID
	// (exports, imports, live migrations): a restarted control plane's,
	// before it settles that move, whose streams died with it.
	mCancelMoves = "cancel_moves"
)

// callRequest is the body of every call; each method reads its fields.
type callRequest struct {
	Call     string    `json:"call"`              // the caller's ID of this call
	Deadline time.Time `json:"deadline,omitzero"` // the caller's ctx deadline
	ID       string    `json:"id,omitempty"`
	Name     string    `json:"name,omitempty"`
	Snapshot string    `json:"snapshot,omitempty"`
	Stream   string    `json:"stream,omitempty"` // dial_agent: the stream's ID
	Data     []byte    `json:"data,omitempty"`   // agent_sign: what to sign
	Algo     string    `json:"algo,omitempty"`   // agent_sign: the signature algorithm ("" the key's default)
	Follow   bool      `json:"follow,omitempty"` // console: keep copying what the guest prints
	Kind     string    `json:"kind,omitempty"`   // direct_ticket: agent, tunnel or disk
	// Direct: export_disk and import_disk: Stream is a direct connection
	// (transfer_direct.go), not a fabric stream.
	Direct bool `json:"direct,omitempty"`
	// Meter (import_disk or import_bundle of a node-to-node stream, which the control
	// plane does not see): the importer says "transfer N/M MiB, R MiB/s"
	// on progress once a second.
	Meter bool `json:"meter,omitempty"`
	// Offset: export_disk: resume the disk stream at this byte of the disk
	// (engine.DiskResumer).
	Offset int64 `json:"offset,omitempty"`
	// Peer: direct_ticket of kind peerdisk: the fingerprint of the
	// certificate the dialing node presents (transfer_peer.go); on
	// import_disk with Resume, the node whose export it is (a resumed
	// stream gets a new peerdisk ticket for it).
	Peer string `json:"peer,omitempty"`
	// Resume: import_disk: the caller resumes a dropped stream; the node
	// asks it to with a streamResume progress step (transfer_resume.go).
	Resume bool `json:"resume,omitempty"`
	// To: export_disk: write the stream to this node's direct listener
	// instead (transfer_peer.go).
	To *peerDial `json:"to,omitempty"`

	Create       *engine.CreateSpec   `json:"create,omitempty"`
	Resize       *engine.ResizeSpec   `json:"resize,omitempty"`
	SnapshotSpec *engine.SnapshotSpec `json:"snapshot_spec,omitempty"`
	Import       *engine.ImportSpec   `json:"import,omitempty"`
	Incoming     *engine.IncomingSpec `json:"incoming,omitempty"`  // live_prepare
	Stream2      string               `json:"stream2,omitempty"`   // live_migrate: the memory's stream
	TrustKey     string               `json:"trust_key,omitempty"` // suspend, live_migrate: the key the guest agent is told to accept too
	Warm         *warmArgs            `json:"warm,omitempty"`      // warm_template
	ForkSpec     *engine.ForkSpec     `json:"fork_spec,omitempty"` // fork
}

// warmArgs are a warm_template call's image and shape.
type warmArgs struct {
	Image     string `json:"image"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskGiB   int    `json:"disk_gib"`
}

// callFrame is a progress step (Step set) or the final answer (Done).
type callFrame struct {
	Step   string          `json:"step,omitempty"`
	Done   bool            `json:"done,omitempty"`
	Error  *wireError      `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// wireError is an error with its errs class (errs.Code) and message.
type wireError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func toWire(err error) *wireError {
	if err == nil {
		return nil
	}
	return &wireError{Code: errs.Code(err), Message: err.Error()}
}

// fromWire rebuilds an error of the same class and message; a deadline
// or cancellation on the node maps back to the context errors.
func fromWire(e *wireError) error {
	if e == nil {
		return nil
	}
	if c := errs.FromCode(e.Code); c != nil {
		return errs.New(c, "%s", e.Message)
	}
	switch e.Message {
	case context.DeadlineExceeded.Error():
		return context.DeadlineExceeded
	case context.Canceled.Error():
		return context.Canceled
	}
	return errors.New(e.Message)
}
