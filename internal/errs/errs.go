// Package errs defines the few error classes Minions uses everywhere.
//
// Every error a user can see is wrapped around one of these classes with
// lowercase context ("start vm web: %w"). Frontends map a class to an HTTP
// status, an exit code and a TUI message in exactly one place each.
package errs

import (
	"errors"
	"fmt"
)

// Class is an error class. Compare with errors.Is.
type Class struct{ name string }

func (c *Class) Error() string { return c.name }

// The classes.
var (
	NotFound           = &Class{"not found"}
	AlreadyExists      = &Class{"already exists"}
	InvalidArgument    = &Class{"invalid argument"}
	FailedPrecondition = &Class{"failed precondition"}
	PermissionDenied   = &Class{"permission denied"}
	Unavailable        = &Class{"unavailable"}
	Unauthenticated    = &Class{"unauthenticated"}
	ResourceExhausted  = &Class{"resource exhausted"}
)

type classed struct {
	class *Class
	msg   string
}

func (e *classed) Error() string        { return e.msg }
func (e *classed) Is(target error) bool { return target == e.class }

// New returns an error of class c with a formatted message. A %w verb in
// format wraps as fmt.Errorf does.
func New(c *Class, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &wrapped{classed: classed{class: c, msg: err.Error()}, inner: errors.Unwrap(err)}
}

type wrapped struct {
	classed
	inner error
}

func (e *wrapped) Unwrap() error { return e.inner }

// ClassOf returns the class of err, or nil for an unclassified error.
func ClassOf(err error) *Class {
	for _, c := range []*Class{NotFound, AlreadyExists, InvalidArgument, FailedPrecondition, PermissionDenied, Unavailable, Unauthenticated, ResourceExhausted} {
		if errors.Is(err, c) {
			return c
		}
	}
	return nil
}

// Code is the stable machine-readable code of err's class ("not_found"), or
// "internal" for an unclassified error.
func Code(err error) string {
	switch ClassOf(err) {
	case NotFound:
		return "not_found"
	case AlreadyExists:
		return "already_exists"
	case InvalidArgument:
		return "invalid_argument"
	case FailedPrecondition:
		return "failed_precondition"
	case PermissionDenied:
		return "permission_denied"
	case Unavailable:
		return "unavailable"
	case Unauthenticated:
		return "unauthenticated"
	case ResourceExhausted:
		return "resource_exhausted"
	}
	return "internal"
}

// FromCode returns the class for a stable code, or nil.
func FromCode(code string) *Class {
	for _, c := range []*Class{NotFound, AlreadyExists, InvalidArgument, FailedPrecondition, PermissionDenied, Unavailable, Unauthenticated, ResourceExhausted} {
		if Code(&classed{class: c}) == code {
			return c
		}
	}
	return nil
}

// ExitCode maps err to a process exit code: 0 for nil, 1 internal, and a
// distinct code per class.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	switch ClassOf(err) {
	case InvalidArgument:
		return 2
	case NotFound:
		return 3
	case AlreadyExists:
		return 4
	case FailedPrecondition:
		return 5
	case PermissionDenied, Unauthenticated:
		return 6
	case Unavailable:
		return 7
	case ResourceExhausted:
		return 8
	}
	return 1
}
