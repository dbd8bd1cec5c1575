package service

import (
	"context"

	"github.com/minionsdev/minions/store"
)

// SettingDefaultImage is the settings key `minions image default` writes;
// it overrides Config.DefaultImage (the config file's default_image).
const SettingDefaultImage = "default_image"

// DefaultImage returns the image create uses without one, and where that
// choice comes from: "setting" (minions image default), else "config".
func (s *Service) DefaultImage(ctx context.Context) (ref, source string, err error) {
	v, err := store.Setting(ctx, s.DB, SettingDefaultImage)
	if err != nil {
		return "", "", err
	}
	if v != "" {
		return v, "setting", nil
	}
	return s.cfg.DefaultImage, "config", nil
}
