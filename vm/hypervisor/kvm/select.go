package kvm

import (
	"fmt"

	"github.com/minionsdev/minions/internal/errs"
)

// Driver names, as hypervisor.Driver.Name reports them.
const (
	DriverCloudHypervisor = "cloud-hypervisor"
	DriverQEMU            = "qemu"
)

// Accelerators.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// SelectInput is what Select decides from. It is gathered by the caller
// (the daemon or `minions doctor`): Select itself does no I/O.
type SelectInput struct {
	// Override is the configured driver: "" or "auto" to choose, or
	// "cloud-hypervisor", "qemu" (accelerator chosen), "qemu-kvm",
	// "qemu-tcg".
	Override string
	// CHBinary and QEMUBinary are the resolved paths of the binaries, ""
	// when not found.
	CHBinary   string
	QEMUBinary string
	// KVM is the result of Probe.
	KVM Result
}

// Choice is the selected driver and why.
type Choice struct {
	Driver string // DriverCloudHypervisor or DriverQEMU
	Accel  string // AccelKVM or AccelTCG
	Why    string
}

// Select picks the hypervisor driver: Cloud Hypervisor when its binary is
// present and KVM really works; else QEMU with KVM; else QEMU with TCG. An
// override is honoured when the host can run it and refused with
// errs.FailedPrecondition when it cannot (never silently replaced); an
// unknown override is errs.InvalidArgument. With no usable hypervisor at all
// the error is errs.FailedPrecondition.
func Select(in SelectInput) (Choice, error) {
	kvmWhy := "KVM usable"
	if !in.KVM.Usable {
		kvmWhy = "KVM not usable: " + in.KVM.Reason
		if in.KVM.Reason == "" {
			kvmWhy = "KVM not usable"
		}
	}
	qemuAccel := func() Choice {
		if in.KVM.Usable {
			return Choice{Driver: DriverQEMU, Accel: AccelKVM}
		}
		return Choice{Driver: DriverQEMU, Accel: AccelTCG}
	}
	switch in.Override {
	case "", "auto":
		switch {
		case in.CHBinary != "" && in.KVM.Usable:
			return Choice{DriverCloudHypervisor, AccelKVM, fmt.Sprintf("cloud-hypervisor found at %s and %s", in.CHBinary, kvmWhy)}, nil
		case in.QEMUBinary != "" && in.KVM.Usable:
			return Choice{DriverQEMU, AccelKVM, fmt.Sprintf("%s; cloud-hypervisor not found; qemu at %s", kvmWhy, in.QEMUBinary)}, nil
		case in.QEMUBinary != "":
			why := fmt.Sprintf("%s; qemu at %s with TCG (software emulation)", kvmWhy, in.QEMUBinary)
			if in.CHBinary != "" {
				why += "; cloud-hypervisor found but it needs KVM"
			}
			return Choice{DriverQEMU, AccelTCG, why}, nil
		case in.CHBinary != "":
			return Choice{}, errs.New(errs.FailedPrecondition, "select hypervisor: cloud-hypervisor found at %s but %s, and qemu-system-x86_64 not found", in.CHBinary, kvmWhy)
		default:
			return Choice{}, errs.New(errs.FailedPrecondition, "select hypervisor: neither cloud-hypervisor nor qemu-system-x86_64 found")
		}
	case DriverCloudHypervisor:
		if in.CHBinary == "" {
			return Choice{}, errs.New(errs.FailedPrecondition, "select hypervisor: cloud-hypervisor requested but its binary was not found")
		}
		if !in.KVM.Usable {
			return Choice{}, errs.New(errs.FailedPrecondition, "select hypervisor: cloud-hypervisor requested but %s", kvmWhy)
		}
		return Choice{DriverCloudHypervisor, AccelKVM, "requested by configuration; " + kvmWhy}, nil
	case DriverQEMU, "qemu-kvm", "qemu-tcg":
		if in.QEMUBinary == "" {
			return Choice{}, errs.New(errs.FailedPrecondition, "select hypervisor: %s requested but qemu-system-x86_64 was not found", in.Override)
		}
		c := qemuAccel()
		switch in.Override {
		case "qemu-kvm":
			if !in.KVM.Usable {
				return Choice{}, errs.New(errs.FailedPrecondition, "select hypervisor: qemu-kvm requested but %s", kvmWhy)
			}
			c.Accel = AccelKVM
		case "qemu-tcg":
			c.Accel = AccelTCG
		}
		c.Why = fmt.Sprintf("requested by configuration (%s); %s", in.Override, kvmWhy)
		return c, nil
	}
	return Choice{}, errs.New(errs.InvalidArgument, "select hypervisor: unknown driver %q (want auto, cloud-hypervisor, qemu, qemu-kvm or qemu-tcg)", in.Override)
}
