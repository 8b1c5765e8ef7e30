// The sandbox's seccomp filter, built here as classic BPF (no libseccomp).
#ifndef SP_SECCOMP_H
#define SP_SECCOMP_H
#include <stddef.h>

#define SP_SECCOMP_RESTRICT_SOCKETS 1u  // socket(2) only for AF_UNIX, AF_INET, AF_INET6

// One rule of the filter, for display (`sandpit policy show`).
struct sp_seccomp_rule {
    const char *name;    // syscall name, or "socket(family)", "ioctl(TIOCSTI)" …
    int nr;              // syscall number on this architecture
    const char *action;  // "EPERM", "ENOSYS", "EAFNOSUPPORT"
};

// The rules compiled into the filter, in order. Returns the count.
size_t sp_seccomp_rules(const struct sp_seccomp_rule **rules);
// "x86_64" or "aarch64": the only architecture the filter admits.
const char *sp_seccomp_arch(void);
// Builds and installs the filter on the calling thread. Needs no_new_privs.
// Async-signal-safe: stack memory and raw syscalls only. 0 or -1 with errno.
int sp_seccomp_install(unsigned flags);
// The same filter as bytes (struct sock_filter[]), for a process that installs
// it itself (an interpreter forked from a zygote). Returns the byte count, 0 if cap is too small.
size_t sp_seccomp_program(unsigned flags, void *out, size_t cap);
#endif
