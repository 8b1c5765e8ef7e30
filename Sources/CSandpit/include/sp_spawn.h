// Daemon side: clone a sandbox's first process into fresh namespaces and exec
// the agent. The code between clone and exec is async-signal-safe: it only
// waits for the parent's go-ahead, fixes its credentials and descriptors, and execs.
#ifndef SP_SPAWN_H
#define SP_SPAWN_H
#include <sys/types.h>

struct sp_fd_map { int src; int dst; };

struct sp_spawn_args {
    int exec_fd;                 // agent executable, opened by the daemon
    char *const *argv;
    char *const *envp;
    const struct sp_fd_map *fds; // placed at their dst numbers; every other fd is closed
    int nfds;
    int sync_fd;                 // child blocks reading one byte from this first
    int report_fd;               // where the child reports a failure as an SP_FRAME_FATAL (a dst fd)
    unsigned long long clone_flags; // CLONE_NEW* flags
    unsigned owner_uid;          // host uid that owns the new user namespace (0: the daemon's root)
    int watch_fd;                // set by sp_spawn_sandbox
};

// A spawned child that still runs on memory of ours (its stack, `args`).
struct sp_spawn_handle { void *mem; int watch_fd; pid_t pid; int pidfd; };

// Clones the child (sharing our memory until it execs) and returns a handle,
// its pid and a pidfd; NULL with errno set on failure. `args` and everything
// it points to must stay valid until sp_spawn_release returns.
struct sp_spawn_handle *sp_spawn_sandbox(struct sp_spawn_args *args, int *pidfd_out, pid_t *pid_out);

// After the child has been let go (a byte on sync_fd) or killed: waits until
// it has exec'd or died, then frees its stack. A child that has not exec'd
// within timeout_ms is killed first (returns -1, errno ETIMEDOUT).
int sp_spawn_release(struct sp_spawn_handle *h, int timeout_ms);

// Namespace flag values, so Swift need not import <linux/sched.h>.
unsigned long long sp_clone_newuser(void);
unsigned long long sp_clone_newpid(void);
unsigned long long sp_clone_newns(void);
unsigned long long sp_clone_newnet(void);
unsigned long long sp_clone_newipc(void);
unsigned long long sp_clone_newuts(void);

int sp_pidfd_send_signal(int pidfd, int sig);
#endif
