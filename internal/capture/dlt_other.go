//go:build !openbsd

package capture

const dltRaw = 12 // DLT_RAW everywhere but OpenBSD
