//go:build !unix || aix || (solaris && !illumos)

package replication

// dirLockSupported reports whether lockDir takes a lock on this system.
const dirLockSupported = false

// lockDir takes no lock on this system (Windows, Plan 9, AIX and Solaris,
// among others), for which package syscall offers no flock(2), and
// returns an unlock that does nothing: nothing here keeps two logs from
// using one directory at once.
//
// A lock file that merely exists (created with O_EXCL, say) is no
// substitute: a crash would leave it behind, and the directory would stay
// locked until someone removed it by hand.
func lockDir(dir string) (unlock func() error, err error) {
	return func() error { return nil }, nil
}
