// Small wrappers for GNU-only libc calls that Swift's Glibc module hides.
#ifndef SP_SYS_H
#define SP_SYS_H
// Returns freed heap memory to the system (glibc's malloc_trim).
int sp_malloc_trim(void);
int sp_pipe_cloexec(int fds[2]);
int sp_socketpair_cloexec(int fds[2]);
int sp_accept_cloexec(int fd);

// open(path, O_PATH | O_CLOEXEC): a handle usable with execveat(AT_EMPTY_PATH).
int sp_open_path(const char *path);
// Layout of struct ucred (SO_PEERCRED), which glibc hides without _GNU_SOURCE.
struct sp_ucred { int pid; unsigned uid; unsigned gid; };
// One byte with `n` descriptors attached (SCM_RIGHTS). 0 or -1 with errno.
int sp_send_fds(int sock, const int *fds, int n);
// The descriptors of one such message (close-on-exec), at most `max` (more are closed):
// their count, or -1 (errno ETIMEDOUT when none came within timeout_ms; 0 = do not wait).
int sp_recv_fds(int sock, int *fds, int max, int timeout_ms);
// Writes text to an existing file (a /proc or cgroup knob) in one write. 0, or -1 with errno.
int sp_write_file(const char *path, const char *text);
// Host checks (sandpit doctor): 1 when the kernel has pidfd_open / openat2 with RESOLVE_IN_ROOT.
int sp_pidfd_open_probe(void);
int sp_openat2_probe(void);
// fallocate(PUNCH_HOLE | KEEP_SIZE): gives a file range's blocks back. 0 or -1 with errno.
int sp_punch_hole(int fd, long long offset, long long length);
#endif
