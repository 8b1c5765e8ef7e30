#define _GNU_SOURCE
#include "sp_mountapi.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

#define SP_FSCONFIG_SET_FLAG 0
#define SP_FSCONFIG_SET_STRING 1
#define SP_FSCONFIG_CMD_CREATE 6
#define SP_FSOPEN_CLOEXEC 1
#define SP_FSMOUNT_CLOEXEC 1
#define SP_OPEN_TREE_CLONE 1
#define SP_AT_RECURSIVE 0x8000
#define SP_AT_EMPTY_PATH 0x1000
#define SP_MOVE_MOUNT_F_EMPTY_PATH 0x04

struct sp_mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };

int sp_fsopen(const char *fstype) { return (int)syscall(SYS_fsopen, fstype, SP_FSOPEN_CLOEXEC); }

int sp_fsconfig_string(int fsfd, const char *key, const char *value) {
    return (int)syscall(SYS_fsconfig, fsfd, SP_FSCONFIG_SET_STRING, key, value, 0);
}

int sp_fsconfig_flag(int fsfd, const char *key) {
    return (int)syscall(SYS_fsconfig, fsfd, SP_FSCONFIG_SET_FLAG, key, NULL, 0);
}

int sp_fsconfig_create(int fsfd) {
    return (int)syscall(SYS_fsconfig, fsfd, SP_FSCONFIG_CMD_CREATE, NULL, NULL, 0);
}

int sp_fsmount(int fsfd, uint64_t attr_flags) {
    return (int)syscall(SYS_fsmount, fsfd, SP_FSMOUNT_CLOEXEC, (unsigned)attr_flags);
}

int sp_open_tree_clone(const char *path) {
    return (int)syscall(SYS_open_tree, AT_FDCWD, path, SP_OPEN_TREE_CLONE | O_CLOEXEC | SP_AT_RECURSIVE);
}

int sp_mount_setattr(int mntfd, uint64_t attr_set, uint64_t attr_clr, int userns_fd) {
    struct sp_mount_attr attr = { attr_set, attr_clr, 0, (uint64_t)(userns_fd < 0 ? 0 : userns_fd) };
    return (int)syscall(SYS_mount_setattr, mntfd, "", SP_AT_EMPTY_PATH | SP_AT_RECURSIVE, &attr, sizeof attr);
}

int sp_move_mount_fd(int mntfd, const char *target) {
    return (int)syscall(SYS_move_mount, mntfd, "", AT_FDCWD, target, SP_MOVE_MOUNT_F_EMPTY_PATH);
}

int sp_open_tree_path(const char *path) {
    return (int)syscall(SYS_open_tree, AT_FDCWD, path, O_CLOEXEC);
}

int sp_move_mount_at(int mntfd, int dirfd, const char *name) {
    return (int)syscall(SYS_move_mount, mntfd, "", dirfd, name, SP_MOVE_MOUNT_F_EMPTY_PATH);
}
