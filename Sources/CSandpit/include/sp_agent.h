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
    unsigned long output_rate; // bytes per second of command output relayed (0 = unlimited)
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

// A command's process: what it becomes between fork and execve (sp_agent_exec.c).
struct sp_child_err { int32_t step; int32_t err; };
enum { SP_STEP_SPAWN, SP_STEP_SETSID, SP_STEP_STDIO, SP_STEP_CREDENTIALS, SP_STEP_CWD, SP_STEP_EXEC,
       SP_STEP_NOFILE, SP_STEP_CGROUP, SP_STEP_TERMINAL, SP_STEP_CAPABILITIES, SP_STEP_COUNT };
struct sp_launch {
    int in, out, err, ep;      // stdin, stdout, stderr; the error pipe's write end (close-on-exec)
    int procs_fd;              // a cgroup.procs to join first (-1: already placed)
    int setsid, pty, placeholder, root_caps;
    unsigned long nofile;      // RLIMIT_NOFILE (0 = inherit)
    uint32_t uid, gid;
    const char *path, *cwd;
    char **argv, **envp;
    int argc, envc;
};
// What the sandbox's root keeps, as a rootless container's root does inside
// its user namespace: owning and changing files (chown, dac_override, fowner,
// fsetid), switching users (setuid, setgid), signals (kill) and low ports
// (net_bind_service). Nothing the seccomp filter is there to stop, no device
// nodes (mknod), raw sockets (net_raw), chroot, or capability changes
// (setpcap, setfcap). A uid-0 command gets these as ambient capabilities;
// every other command gets none (a zygote's interpreter, root without
// SP_SPAWN_ROOT_CAPS, gets none either).
extern const int sp_root_caps[];
extern const int sp_root_caps_count;
// Never returns: execs l->path, or reports { step, errno } on l->ep and exits 127.
_Noreturn void sp_agent_become(const struct sp_launch *l);

// The commands' cgroups (sp_agent_groups.c), children of the delegated one.
// Returns 1 on cgroup v2 (where the agent moved itself into a leaf).
int sp_groups_init(int cgroup_fd);
// The kernel's count of OOM kills in a group; -1 when it cannot be read.
int32_t sp_group_oom_kills(const char *name);
// Takes a kept group (1; its name and the OOM count it had), or none (0).
int sp_group_take(char *name, size_t len, int32_t *ooms);
// Makes a group, named `wanted` or a fresh name; 0, or -1 (errno).
int sp_group_make(char *name, size_t len, const char *wanted, int32_t *ooms);
// Makes one to keep when none is kept (after a spawn, off its path).
void sp_group_prepare(void);
// An ended command's group, given its OOM count: kept for the next command
// when empty, else removed; -1 when processes it left still hold it.
int sp_group_release(const char *name, int32_t ooms);

// The spare process (sp_agent_spare.c): the next command's process, forked and
// placed in a cgroup of its own (a kept one or "ex_s<n>") ahead of time.
// 1: there is one; 0: none now (try later); -1: never here (no cgroup).
int sp_agent_spare_make(int cgroup_fd);
int sp_agent_spare_ready(void);
// Hands the spare the command; its pid, or -1 (no spare, or it died) and the
// caller spawns as it would without one. group and ooms: out, the command's
// group (the spare's) and its OOM count so far, set only on success.
int sp_agent_spare_launch(char *group, size_t glen, int32_t *ooms, const struct sp_launch *l);
// 1 when pid was the spare (it died waiting); 2 when it died at once after its
// fork (it could not join its group): then wait before making another.
int sp_agent_spare_reaped(int pid);

// Frame I/O on the control socket (blocking writes, all-or-nothing).
int sp_send_frame(int fd, unsigned type, unsigned stream, unsigned id, const void *a, size_t alen, const void *b, size_t blen);
#endif
