// Small wrappers for GNU-only libc calls that Swift's Glibc module hides.
#ifndef SP_SYS_H
#define SP_SYS_H
int sp_pipe_cloexec(int fds[2]);
int sp_socketpair_cloexec(int fds[2]);
int sp_accept_cloexec(int fd);

// open(path, O_PATH | O_CLOEXEC): a handle usable with execveat(AT_EMPTY_PATH).
int sp_open_path(const char *path);
// Layout of struct ucred (SO_PEERCRED), which glibc hides without _GNU_SOURCE.
struct sp_ucred { int pid; unsigned uid; unsigned gid; };
// One byte with `n` descriptors attached (SCM_RIGHTS). 0 or -1 with errno.
int sp_send_fds(int sock, const int *fds, int n);
// One descriptor sent with sp_send_fds or the agent's NESTED reply (close-on-exec), or -1
// (errno ETIMEDOUT when none came within timeout_ms).
int sp_recv_fd(int sock, int timeout_ms);
#endif
