// Restoring a live sandbox's files in place (see sp_rootswap.c).
#ifndef SP_ROOTSWAP_H
#define SP_ROOTSWAP_H

// Makes `newroot_fd` (a detached mount: the restored overlay) the root of the
// mount namespace `mntns_fd`, carrying over its /proc, /dev and (when
// `move_usr`) /usr mounts and giving it a fresh /tmp and /dev/shm mounted
// with `tmp_opts`. pivot_root moves the root and working directory of every
// process in that namespace whose root or cwd was the old root. On failure
// returns -1 with errno set and `*step` naming what failed.
//
// It changes the calling thread's filesystem context for good (unshare
// CLONE_FS, setns), so it must run on a thread of its own that exits afterwards.
int sp_swap_root(int mntns_fd, int newroot_fd, int move_usr, const char *tmp_opts, const char **step);
#endif
