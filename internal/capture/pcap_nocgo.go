//go:build !cgo

package capture

import "errors"

func openPcap(iface string, c Config) (Source, error) {
	return nil, errors.New("this tapstream was built without libpcap (cgo); use --capture afpacket")
}

func describeInterface(string) string { return "" }

func appendPcapOnly(list []Interface) []Interface { return list }

// LibraryVersion describes the packet capture library linked in.
func LibraryVersion() string { return "no libpcap (built without cgo)" }
