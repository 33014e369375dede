package meshv1

// ErrorDomainStorage is the domain of the google.rpc.ErrorInfo a worker attaches to a Load
// that failed fetching the model's files. Its reason is one of not_found, denied, tls,
// checksum, bad_uri (the same request fails again: nothing to retry), or unavailable,
// timeout, disk_full (another try, or another worker, may succeed).
const ErrorDomainStorage = "storage.modelmesh.dev"

// PermanentStorageReason reports the ErrorInfo reasons of ErrorDomainStorage that no retry
// can mend.
func PermanentStorageReason(reason string) bool {
	switch reason {
	case "not_found", "denied", "tls", "checksum", "bad_uri":
		return true
	}
	return false
}
