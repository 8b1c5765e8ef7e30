// Rootless mode: an unprivileged `sandpit` runs itself again in a user and
// mount namespace of its own, where it is root over the ids it was given.
#ifndef SP_ROOTLESS_H
#define SP_ROOTLESS_H
#include <sys/types.h>
// Forks a child that unshares a user and a mount namespace and waits. On
// success returns its pid and sets *go_fd: the caller writes the child's id
// maps (newuidmap/newgidmap), then writes one byte to *go_fd and closes it;
// the child becomes root in its namespace and execs `exe` with argv/envp.
// Closing *go_fd without writing makes the child exit. -1 with errno when
// the fork or the unshare failed (the child is reaped then).
pid_t sp_rootless_spawn(const char *exe, char *const argv[], char *const envp[], int *go_fd);
// Waits for `pid`, forwarding SIGINT, SIGTERM, SIGHUP and SIGQUIT to it.
// Returns its exit status, or 128 + the signal that killed it.
int sp_rootless_wait(pid_t pid);
#endif
