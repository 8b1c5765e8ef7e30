// The new mount API (fsopen/fsmount/open_tree/move_mount/mount_setattr),
// called through syscall(2) so the build does not depend on libc wrappers.
#ifndef SP_MOUNTAPI_H
#define SP_MOUNTAPI_H
#include <stdint.h>

#define SP_MOUNT_ATTR_RDONLY 0x00000001ull
#define SP_MOUNT_ATTR_NOSUID 0x00000002ull
#define SP_MOUNT_ATTR_NODEV 0x00000004ull
#define SP_MOUNT_ATTR_NOEXEC 0x00000008ull
#define SP_MOUNT_ATTR_NOATIME 0x00000010ull
#define SP_MOUNT_ATTR_IDMAP 0x00100000ull

int sp_fsopen(const char *fstype);
int sp_fsconfig_string(int fsfd, const char *key, const char *value);
int sp_fsconfig_flag(int fsfd, const char *key);
int sp_fsconfig_create(int fsfd);
int sp_fsmount(int fsfd, uint64_t attr_flags);
// A detached, recursive clone of the mount tree at path.
int sp_open_tree_clone(const char *path);
int sp_mount_setattr(int mntfd, uint64_t attr_set, uint64_t attr_clr, int userns_fd);
int sp_move_mount_fd(int mntfd, const char *target);
// An O_PATH handle on the mount at path (not a clone): moving it moves that mount.
int sp_open_tree_path(const char *path);
// Moves the mount `mntfd` onto `name` under the directory `dirfd` (the final component is not followed).
int sp_move_mount_at(int mntfd, int dirfd, const char *name);
#endif
