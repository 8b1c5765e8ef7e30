// File access inside a sandbox's root from the daemon: openat2 confined to
// a root directory, and per-thread filesystem credentials.
#ifndef SP_FILES_H
#define SP_FILES_H
#include <stdint.h>

// openat2(dirfd, path, {flags, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS}):
// ".." and absolute symlinks stay inside dirfd, /proc magic links are refused,
// and the kernel checks every component atomically (no symlink-swap race).
int sp_open_in_root(int root_fd, const char *path, int flags, unsigned mode);
// The calling thread's filesystem uid/gid (setfsuid/setfsgid). Switching away
// from 0 drops the thread's file capabilities (DAC override, chown, fowner);
// switching back restores them. Returns the previous id.
int sp_set_fsids(unsigned uid, unsigned gid);
// A duplicate of descriptor `fd` of the process `pidfd` refers to (pidfd_getfd,
// close-on-exec); -1 with errno. How a local client hands the daemon a file:
// the daemon takes it from the process that connected (its pidfd, opened at
// accept from SO_PEERCRED), never from a pid the client names.
int sp_pidfd_getfd(int pidfd, int fd);
int sp_pidfd_open(int pid);
// Copies `in` (from its offset `in_off`) to `out` (at out's file position)
// until EOF: copy_file_range, else sendfile (other filesystems), in the
// kernel. Returns the bytes copied, or -1 with errno (what was copied stays).
long long sp_copy_fd(int in, long long in_off, int out);
// Swaps two paths atomically (renameat2 RENAME_EXCHANGE): both must exist.
int sp_rename_exchange(const char *a, const char *b);
// Flag values Swift's Glibc module does not export.
int sp_o_path(void);
int sp_o_tmpfile(void);
#endif
