//go:build !linux

package capture

import "errors"

// DefaultBackend is the backend used when Config.Backend is empty.
func DefaultBackend() string { return BackendPcap }

func openAFPacket(iface string, c Config) (Source, error) {
	return nil, errors.New("the afpacket backend exists only on Linux; use --capture pcap")
}
