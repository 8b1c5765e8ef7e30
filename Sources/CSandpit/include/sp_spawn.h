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
};

// Returns the child's pid (>0) and stores a pidfd in *pidfd_out, or -1 with errno set.
pid_t sp_spawn_sandbox(const struct sp_spawn_args *args, int *pidfd_out);

// Namespace flag values, so Swift need not import <linux/sched.h>.
unsigned long long sp_clone_newuser(void);
unsigned long long sp_clone_newpid(void);
unsigned long long sp_clone_newns(void);
unsigned long long sp_clone_newnet(void);
unsigned long long sp_clone_newipc(void);
unsigned long long sp_clone_newuts(void);

int sp_pidfd_send_signal(int pidfd, int sig);
#endif
