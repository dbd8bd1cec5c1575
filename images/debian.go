package images

import (
	"context"
	"errors"
	"time"
)

func (c *Catalog) buildDebian(ctx context.Context, o BuildOptions, progress func(string)) (Image, error) {
	_ = time.Now()
	return Image{}, errors.New("todo")
}
