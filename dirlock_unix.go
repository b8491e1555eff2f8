//go:build unix && !aix && !(solaris && !illumos)

package replication

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// dirLockSupported reports whether lockDir takes a lock on this system.
const dirLockSupported = true

// lockDir takes an exclusive lock on dir, an flock(2) lock on the file
// LOCK in it (created if missing), without waiting. The lock belongs to
// the open file, so it excludes other holders in this process as well as
// in others, and the system releases it when the process exits, even by a
// crash: the LOCK file left behind does not keep the directory locked.
//
// If another holder has the lock, lockDir returns an error wrapping
// errDirLocked that names dir. unlock releases the lock; it must be
// called once.
func lockDir(dir string) (unlock func() error, err error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("replication: lock data directory: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("replication: lock data directory %s: %w", dir, err)
	}
	var lockErr error
	err = rc.Control(func(fd uintptr) {
		for {
			lockErr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB)
			if lockErr != syscall.EINTR {
				return
			}
		}
	})
	if err == nil {
		err = lockErr
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is in use by another log", errDirLocked, dir)
		}
		return nil, fmt.Errorf("replication: lock data directory %s: %w", dir, err)
	}
	// Closing the file releases the lock.
	return f.Close, nil
}
