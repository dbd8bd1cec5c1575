package nodeagent

import (
	"context"
	"errors"
	"fmt"

	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// FetchImages is a node's engine.Images: images are built once, on the
// control plane, and reach nodes by checksum. A ref is resolved on the
// node's own catalogue (Local) when it names a version the node has;
// otherwise (a bare "os", or a version the node lacks) the control plane
// says what the ref means (Fetcher.Bundle), the node fetches the image and
// the guest kernel it boots with if it lacks them (Fetcher.Ensure:
// verified, atomic, one download for concurrent creates) and resolves the
// exact version locally. When the control plane cannot be reached a bare
// "os" falls back to the newest version the node has.
type FetchImages struct {
	Local   engine.Images // the node's catalogue (engine.CatalogImages)
	Fetcher *Fetcher      // its catalogue must be the one Local reads
}

var _ engine.Images = FetchImages{}

// Resolve implements engine.Images. Errors: those of Local.Resolve for a
// version the node has; errs.NotFound when the control plane has no such
// image; errs.Unavailable when it cannot be reached or a download is
// corrupt (nothing is installed then).
func (fi FetchImages) Resolve(ctx context.Context, ref string) (engine.Image, error) {
	_, version, err := images.ParseRef(ref)
	if err != nil {
		return engine.Image{}, err
	}
	if version != "" {
		img, err := fi.Local.Resolve(ctx, ref)
		if err == nil || !isMissing(err) {
			return img, err
		}
	}
	b, err := fi.Fetcher.Bundle(ctx, ref)
	if err != nil {
		if version == "" && errors.Is(err, errs.Unavailable) {
			if img, lerr := fi.Local.Resolve(ctx, ref); lerr == nil {
				return img, nil
			}
		}
		return engine.Image{}, err
	}
	if b.Kernel != nil {
		if _, err := fi.Fetcher.Ensure(ctx, *b.Kernel); err != nil {
			return engine.Image{}, fmt.Errorf("fetch kernel %s for image %s: %w", b.Kernel.Name, b.Image.Name, err)
		}
	}
	if _, err := fi.Fetcher.Ensure(ctx, b.Image); err != nil {
		return engine.Image{}, fmt.Errorf("fetch image %s: %w", b.Image.Name, err)
	}
	return fi.Local.Resolve(ctx, b.Image.Name)
}
