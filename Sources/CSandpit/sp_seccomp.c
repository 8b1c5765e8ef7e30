// Seccomp: a deny-list in the spirit of container runtimes' defaults, checked
// against the one architecture we were built for. Denied calls fail with
// EPERM (clone3 with ENOSYS so libc falls back to clone, whose flags a
// classic BPF filter can read). Other-architecture and x32 calls are killed.
#define _GNU_SOURCE
#include "sp_seccomp.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define SP_AUDIT_ARCH AUDIT_ARCH_X86_64
#define SP_ARCH_NAME "x86_64"
#elif defined(__aarch64__)
#define SP_AUDIT_ARCH AUDIT_ARCH_AARCH64
#define SP_ARCH_NAME "aarch64"
#else
#error "sandpit's seccomp filter supports x86_64 and aarch64"
#endif

// Syscalls newer than the build host's headers: numbers are shared by all
// architectures since 5.1's unified table.
#ifndef __NR_open_tree_attr
#define __NR_open_tree_attr 467
#endif
#ifdef CLONE_NEWTIME
#define SP_CLONE_NEWTIME CLONE_NEWTIME
#else
#define SP_CLONE_NEWTIME 0x00000080
#endif

#define R(n, a) { #n, __NR_##n, a }
static const struct sp_seccomp_rule deny[] = {
    // Mounts and the new mount API.
    R(mount, "EPERM"), R(umount2, "EPERM"), R(pivot_root, "EPERM"),
    R(fsopen, "EPERM"), R(fsconfig, "EPERM"), R(fsmount, "EPERM"), R(fspick, "EPERM"),
    R(move_mount, "EPERM"), R(open_tree, "EPERM"), R(open_tree_attr, "EPERM"), R(mount_setattr, "EPERM"),
    // Namespaces.
    R(unshare, "EPERM"), R(setns, "EPERM"),
    // Kernel keyrings.
    R(add_key, "EPERM"), R(request_key, "EPERM"), R(keyctl, "EPERM"),
    // Kernel attack surface with a history of exploits.
    R(bpf, "EPERM"), R(perf_event_open, "EPERM"), R(userfaultfd, "EPERM"),
    R(io_uring_setup, "EPERM"), R(io_uring_enter, "EPERM"), R(io_uring_register, "EPERM"),
    // Kernel replacement and modules.
    R(kexec_load, "EPERM"), R(kexec_file_load, "EPERM"),
    R(init_module, "EPERM"), R(finit_module, "EPERM"), R(delete_module, "EPERM"),
    // File handles bypass path-based confinement.
    R(open_by_handle_at, "EPERM"), R(name_to_handle_at, "EPERM"),
    // Host-wide state.
    R(reboot, "EPERM"), R(swapon, "EPERM"), R(swapoff, "EPERM"),
    R(settimeofday, "EPERM"), R(clock_settime, "EPERM"), R(clock_adjtime, "EPERM"), R(adjtimex, "EPERM"),
    R(acct, "EPERM"), R(quotactl, "EPERM"), R(syslog, "EPERM"), R(vhangup, "EPERM"),
    R(fanotify_init, "EPERM"), R(kcmp, "EPERM"),
#ifdef __NR_quotactl_fd
    R(quotactl_fd, "EPERM"),
#endif
#ifdef __NR_lookup_dcookie
    R(lookup_dcookie, "EPERM"),
#endif
#ifdef __NR_iopl
    R(iopl, "EPERM"), R(ioperm, "EPERM"),
#endif
#ifdef __NR_uselib
    R(uselib, "EPERM"),
#endif
#ifdef __NR_sysfs
    R(sysfs, "EPERM"), R(ustat, "EPERM"),
#endif
#ifdef __NR_create_module
    R(create_module, "EPERM"), R(get_kernel_syms, "EPERM"), R(query_module, "EPERM"),
#endif
#ifdef __NR_nfsservctl
    R(nfsservctl, "EPERM"),
#endif
};
#undef R

static const struct sp_seccomp_rule special[] = {
    { "clone3", __NR_clone3, "ENOSYS" },
    { "clone(CLONE_NEW*)", __NR_clone, "EPERM" },
    { "ioctl(TIOCSTI, TIOCLINUX)", __NR_ioctl, "EPERM" },
    { "socket(family not unix/inet/inet6)", __NR_socket, "EAFNOSUPPORT" },
};

#define NDENY (sizeof deny / sizeof deny[0])
#define NSPECIAL (sizeof special / sizeof special[0])

size_t sp_seccomp_rules(const struct sp_seccomp_rule **rules) {
    static struct sp_seccomp_rule all[NDENY + NSPECIAL];
    for (size_t i = 0; i < NDENY; i++) all[i] = deny[i];
    for (size_t i = 0; i < NSPECIAL; i++) all[NDENY + i] = special[i];
    *rules = all;
    return NDENY + NSPECIAL;
}

const char *sp_seccomp_arch(void) { return SP_ARCH_NAME; }

#define ARG_LO(i) (offsetof(struct seccomp_data, args) + (i) * sizeof(uint64_t))  // little-endian low word
#define RET_ERRNO(e) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((e) & SECCOMP_RET_DATA))
#define RET_ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define LOAD(off) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off))

#define NS_FLAGS (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | \
                  CLONE_NEWCGROUP | SP_CLONE_NEWTIME)

#define SP_SECCOMP_MAX_INSNS (2 * NDENY + 64)

// The filter's program into f (room for SP_SECCOMP_MAX_INSNS); returns its length.
static unsigned build(unsigned flags, struct sock_filter *f) {
    unsigned n = 0;
#define EMIT(insn) (f[n++] = (struct sock_filter)insn)
    EMIT(LOAD(offsetof(struct seccomp_data, arch)));
    EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SP_AUDIT_ARCH, 1, 0));
    EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    EMIT(LOAD(offsetof(struct seccomp_data, nr)));
#if defined(__x86_64__)
    // x32 system calls share the architecture token; refuse them all.
    EMIT(BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1));
    EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
#endif
    for (size_t i = 0; i < NDENY; i++) {
        EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)deny[i].nr, 0, 1));
        EMIT(RET_ERRNO(EPERM));
    }
    EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1));
    EMIT(RET_ERRNO(ENOSYS));
    // clone: flags are the first argument on both architectures.
    EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 4));
    EMIT(LOAD(ARG_LO(0)));
    EMIT(BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, NS_FLAGS, 0, 1));
    EMIT(RET_ERRNO(EPERM));
    EMIT(RET_ALLOW);
    // ioctl: the kernel truncates the request to 32 bits, so the low word is the whole request.
    EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 0, 5));
    EMIT(LOAD(ARG_LO(1)));
    EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCSTI, 1, 0));
    EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCLINUX, 0, 1));
    EMIT(RET_ERRNO(EPERM));
    EMIT(RET_ALLOW);
    if (flags & SP_SECCOMP_RESTRICT_SOCKETS) {
        EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 0, 6));
        EMIT(LOAD(ARG_LO(0)));
        EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 3, 0));
        EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET, 2, 0));
        EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET6, 1, 0));
        EMIT(RET_ERRNO(EAFNOSUPPORT));
        EMIT(RET_ALLOW);
    }
    EMIT(RET_ALLOW);
#undef EMIT
    return n;
}

int sp_seccomp_install(unsigned flags) {
    struct sock_filter f[SP_SECCOMP_MAX_INSNS];
    struct sock_fprog prog = { .len = (unsigned short)build(flags, f), .filter = f };
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

size_t sp_seccomp_program(unsigned flags, void *out, size_t cap) {
    struct sock_filter f[SP_SECCOMP_MAX_INSNS];
    size_t bytes = build(flags, f) * sizeof f[0];
    if (bytes > cap) return 0;
    memcpy(out, f, bytes);
    return bytes;
}
