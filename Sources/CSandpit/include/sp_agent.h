// The in-sandbox agent (PID 1 of the sandbox's pid namespace).
#ifndef SP_AGENT_H
#define SP_AGENT_H
#include <stddef.h>
#include <stdint.h>

struct sp_agent_config {
    const char *hostname;
    unsigned long tmp_size_bytes;
    int has_usr;
    int seccomp;               // 0 off, else SP_SECCOMP_* flags + 1 << 8 ("on")
    unsigned long nofile;      // RLIMIT_NOFILE for spawned commands (0 = inherit)
    int cgroup_fd;             // delegated cgroup dir: each exec gets a child group "ex_<id>" (-1 = none)
    int zygote;                // a warm template's zygote: starts nested sandboxes (NEST), no seccomp of its own
    int nest_fd;               // zygote: where nested sandboxes' descriptors arrive (-1 = none)
};

int sp_agent_main(int argc, char **argv);

// Steps, each returns 0 or -1 with errno set and *step naming what failed.
int sp_agent_setup_mounts(const struct sp_agent_config *cfg, const char **step);
int sp_agent_setup_network(const char **step);
int sp_agent_harden(const char **step);
int sp_agent_loop(int ctrl_fd, const struct sp_agent_config *cfg);
// A new pseudo-terminal of the sandbox's devpts, with this window size (0: 24x80).
int sp_agent_open_pty(unsigned rows, unsigned cols, int *master, int *slave);
// Sets a PTY's window size; the kernel signals its foreground process group (SIGWINCH).
int sp_agent_resize_pty(int master, unsigned rows, unsigned cols);
// NEST (zygote agents): clones a nested sandbox's first process; sends NESTED.
void sp_agent_nest(int ctrl_fd, int nest_fd, uint32_t id, const char *payload, size_t len);

// Frame I/O on the control socket (blocking writes, all-or-nothing).
int sp_send_frame(int fd, unsigned type, unsigned stream, unsigned id, const void *a, size_t alen, const void *b, size_t blen);
#endif
