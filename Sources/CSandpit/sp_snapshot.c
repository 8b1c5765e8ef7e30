#define _GNU_SOURCE
#include <sys/xattr.h>
#include "sp_snapshot.h"

#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

int sp_fs_freeze(int fd) { return ioctl(fd, FIFREEZE, 0); }
int sp_fs_thaw(int fd) { return ioctl(fd, FITHAW, 0); }
int sp_fs_sync(int fd) { return syncfs(fd); }
int sp_clone_file(int src_fd, int dst_fd) { return ioctl(dst_fd, FICLONE, src_fd); }
int sp_mark_opaque(int dir_fd, int user_xattr) {
    return fsetxattr(dir_fd, user_xattr ? "user.overlay.opaque" : "trusted.overlay.opaque", "y", 1, 0);
}
int sp_is_whiteout(unsigned mode, unsigned long long rdev) {
    return S_ISCHR(mode) && major((dev_t)rdev) == 0 && minor((dev_t)rdev) == 0;
}
