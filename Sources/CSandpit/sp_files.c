#define _GNU_SOURCE
#include "sp_files.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/fsuid.h>
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

int sp_open_in_root(int root_fd, const char *path, int flags, unsigned mode) {
    struct open_how how = { 0 };
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    return (int)syscall(SYS_openat2, root_fd, path, &how, sizeof how);
}

int sp_set_fsids(unsigned uid, unsigned gid) {
    // Group first: once the uid is not 0 the thread may no longer change it.
    setfsgid(gid);
    setfsgid(gid);
    int prev = setfsuid(uid);
    return (unsigned)setfsuid(uid) == uid ? prev : -1;
}

int sp_o_path(void) { return O_PATH; }
int sp_o_tmpfile(void) { return O_TMPFILE; }

int sp_pidfd_open(int pid) { return (int)syscall(434 /* SYS_pidfd_open */, pid, 0); }

int sp_pidfd_getfd(int pidfd, int fd) { return (int)syscall(438 /* SYS_pidfd_getfd */, pidfd, fd, 0); }

long long sp_copy_fd(int in, long long in_off, int out) {
    long long total = 0;
    off_t off = (off_t)in_off;
    int cfr = 1;
    for (;;) {
        ssize_t n;
        if (cfr) {
            n = copy_file_range(in, &off, out, NULL, 1 << 30, 0);
            if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS)) { cfr = 0; continue; }
        } else {
            n = sendfile(out, in, &off, 1 << 30);
        }
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        if (n == 0) return total;
        total += n;
    }
}

int sp_rename_exchange(const char *a, const char *b) {
    return (int)syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, 2 /* RENAME_EXCHANGE */);
}
