package auth

// Request header (gRPC metadata) keys an agent sends its credentials in,
// as well as in its Hello: the collector authenticates a stream from them
// before it reads the stream's first message, whose size an
// unauthenticated client would otherwise choose.
const (
	MetadataToken    = "tapstream-token"
	MetadataUser     = "tapstream-user-bin"
	MetadataPassword = "tapstream-password-bin"
)

// The user and password keys end in -bin: gRPC carries them base64-encoded,
// so any bytes may be in them.
