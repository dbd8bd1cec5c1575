package service

import (
	"context"

	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/store"
)

// SettingDefaultImage is the settings key `minions image default` writes;
// it overrides Config.DefaultImage (the config file's default_image).
const SettingDefaultImage = "default_image"

// DefaultImageFor is the image create uses without one, and where that
// choice comes from: "setting" (minions image default, in q), else
// "config" (configured: the config file's default_image), else "built-in"
// (minimal). q may be nil (no database yet).
func DefaultImageFor(ctx context.Context, q store.Q, configured string) (ref, source string, err error) {
	if q != nil {
		if ref, err = store.Setting(ctx, q, SettingDefaultImage); err != nil || ref != "" {
			return ref, "setting", err
		}
	}
	if configured != "" {
		return configured, "config", nil
	}
	return images.DefaultImage, "built-in", nil
}

// DefaultImage is the image create uses without one.
func (s *Service) DefaultImage(ctx context.Context) (string, error) {
	ref, _, err := DefaultImageFor(ctx, s.DB, s.cfg.DefaultImage)
	return ref, err
}
