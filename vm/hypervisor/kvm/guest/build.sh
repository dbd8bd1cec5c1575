#!/bin/sh
# Rebuilds the probe's guest programs (GNU as + objcopy). The .bin files are
# committed and embedded; guest_test.go checks they match these sources.
set -e
cd "$(dirname "$0")"
for f in real16 long64 kernel64; do
	as --64 -o "$f.o" "$f.S"
	objcopy -O binary -j .text "$f.o" "$f.bin"
	rm -f "$f.o"
done
