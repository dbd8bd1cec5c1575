package api_test

import (
	"fmt"
	"slices"
	"strconv"
	"time"
)

func itoa(i int) string { return strconv.Itoa(i) }

func macOf(i int) string { return fmt.Sprintf("52:54:00:00:%02x:%02x", i>>8, i&0xff) }

func slicesSort(d []time.Duration) { slices.Sort(d) }
