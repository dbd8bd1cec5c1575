package kvm

import (
	"errors"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
)

func TestSelect(t *testing.T) {
	usable := Result{Usable: true, Reason: "ok"}
	broken := Result{Reason: `stage "kernel" failed: emulation failure`}
	const ch, qemu = "/usr/bin/cloud-hypervisor", "/usr/bin/qemu-system-x86_64"
	tests := []struct {
		name     string
		in       SelectInput
		driver   string
		accel    string
		whyHas   string
		errClass *errs.Class
	}{
		{"ch and kvm", SelectInput{CHBinary: ch, QEMUBinary: qemu, KVM: usable}, DriverCloudHypervisor, AccelKVM, "cloud-hypervisor found", nil},
		{"auto spelled out", SelectInput{Override: "auto", CHBinary: ch, KVM: usable}, DriverCloudHypervisor, AccelKVM, "KVM usable", nil},
		{"ch without kvm falls back to tcg", SelectInput{CHBinary: ch, QEMUBinary: qemu, KVM: broken}, DriverQEMU, AccelTCG, "cloud-hypervisor found but it needs KVM", nil},
		{"qemu with kvm", SelectInput{QEMUBinary: qemu, KVM: usable}, DriverQEMU, AccelKVM, "cloud-hypervisor not found", nil},
		{"qemu tcg reason carried", SelectInput{QEMUBinary: qemu, KVM: broken}, DriverQEMU, AccelTCG, "emulation failure", nil},
		{"only ch, no kvm", SelectInput{CHBinary: ch, KVM: broken}, "", "", "", errs.FailedPrecondition},
		{"nothing", SelectInput{KVM: usable}, "", "", "", errs.FailedPrecondition},
		{"override ch", SelectInput{Override: "cloud-hypervisor", CHBinary: ch, QEMUBinary: qemu, KVM: usable}, DriverCloudHypervisor, AccelKVM, "requested", nil},
		{"override ch without kvm refused", SelectInput{Override: "cloud-hypervisor", CHBinary: ch, QEMUBinary: qemu, KVM: broken}, "", "", "", errs.FailedPrecondition},
		{"override ch missing binary", SelectInput{Override: "cloud-hypervisor", QEMUBinary: qemu, KVM: usable}, "", "", "", errs.FailedPrecondition},
		{"override qemu picks kvm", SelectInput{Override: "qemu", CHBinary: ch, QEMUBinary: qemu, KVM: usable}, DriverQEMU, AccelKVM, "requested", nil},
		{"override qemu picks tcg", SelectInput{Override: "qemu", QEMUBinary: qemu, KVM: broken}, DriverQEMU, AccelTCG, "requested", nil},
		{"override qemu-tcg with kvm", SelectInput{Override: "qemu-tcg", QEMUBinary: qemu, KVM: usable}, DriverQEMU, AccelTCG, "qemu-tcg", nil},
		{"override qemu-kvm without kvm", SelectInput{Override: "qemu-kvm", QEMUBinary: qemu, KVM: broken}, "", "", "", errs.FailedPrecondition},
		{"override qemu missing", SelectInput{Override: "qemu", CHBinary: ch, KVM: usable}, "", "", "", errs.FailedPrecondition},
		{"unknown override", SelectInput{Override: "firecracker", QEMUBinary: qemu}, "", "", "", errs.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Select(tt.in)
			if tt.errClass != nil {
				if !errors.Is(err, tt.errClass) {
					t.Fatalf("Select = %+v, %v; want error of class %v", c, err, tt.errClass)
				}
				return
			}
			if err != nil {
				t.Fatalf("Select: %v", err)
			}
			if c.Driver != tt.driver || c.Accel != tt.accel {
				t.Errorf("Select = %s/%s, want %s/%s", c.Driver, c.Accel, tt.driver, tt.accel)
			}
			if !strings.Contains(c.Why, tt.whyHas) {
				t.Errorf("Why = %q, want it to mention %q", c.Why, tt.whyHas)
			}
		})
	}
}
