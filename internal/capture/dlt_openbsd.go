package capture

const dltRaw = 14 // DLT_RAW on OpenBSD
