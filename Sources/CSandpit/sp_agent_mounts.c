// The sandbox's filesystem view. Runs in the agent, a fresh single-threaded
// process that is root of its own user namespace. The daemon has already built
// the overlay root (fd SP_AGENT_FD_ROOT) and a read-only clone of /usr
// (fd SP_AGENT_FD_USR), and /dev with device nodes of its own (SP_AGENT_FD_DEV), with full privileges; here they are attached inside the
// sandbox's private mount namespace, so every sandbox mount dies with it.
#define _GNU_SOURCE
#include "sp_agent.h"
#include "sp_mountapi.h"
#include "sp_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NEWROOT "/tmp"

#define STEP(name, expr) do { *step = (name); if ((expr) != 0) return -1; } while (0)

static int mkdir_p1(const char *path, mode_t mode) {
    if (mkdir(path, mode) != 0 && errno != EEXIST) return -1;
    return 0;
}

int sp_agent_setup_mounts(const struct sp_agent_config *cfg, const char **step) {
    char opts[128];
    STEP("make mounts private", mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
    STEP("attach root overlay", sp_move_mount_fd(SP_AGENT_FD_ROOT, NEWROOT));
    close(SP_AGENT_FD_ROOT);
    if (cfg->has_usr) {
        STEP("mkdir /usr", mkdir_p1(NEWROOT "/usr", 0755));
        STEP("attach /usr", sp_move_mount_fd(SP_AGENT_FD_USR, NEWROOT "/usr"));
        close(SP_AGENT_FD_USR);
    }
    STEP("mkdir /proc", mkdir_p1(NEWROOT "/proc", 0555));
    STEP("mount /proc", mount("proc", NEWROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL));
    // Kernel knobs stay readable but not writable; sysrq and kcore are masked.
    STEP("bind /proc/sys", mount(NEWROOT "/proc/sys", NEWROOT "/proc/sys", NULL, MS_BIND | MS_REC, NULL));
    STEP("remount /proc/sys ro", mount(NULL, NEWROOT "/proc/sys", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL));

    STEP("mkdir /dev", mkdir_p1(NEWROOT "/dev", 0755));
    // Device nodes of our own (the daemon made them): a bind of the host's
    // would share their inodes, and so their file locks, with the host and
    // every other sandbox.
    STEP("attach /dev", sp_move_mount_fd(SP_AGENT_FD_DEV, NEWROOT "/dev"));
    close(SP_AGENT_FD_DEV);
    // Masked where the kernel has them, with the sandbox's own /dev/null
    // (a file lock taken on a mask must not reach the host's).
    const char *masked[] = { NEWROOT "/proc/sysrq-trigger", NEWROOT "/proc/kcore", NEWROOT "/proc/kallsyms",
                             NEWROOT "/proc/timer_list", NEWROOT "/proc/keys", NEWROOT "/proc/latency_stats" };
    for (size_t i = 0; i < sizeof masked / sizeof masked[0]; i++) {
        if (access(masked[i], F_OK) != 0) continue;
        STEP("mask procfs file", mount(NEWROOT "/dev/null", masked[i], NULL, MS_BIND, NULL));
    }
    STEP("mkdir /dev/pts", mkdir_p1(NEWROOT "/dev/pts", 0755));
    STEP("mount /dev/pts", mount("devpts", NEWROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"));
    STEP("link /dev/ptmx", symlink("pts/ptmx", NEWROOT "/dev/ptmx"));
    STEP("mkdir /dev/shm", mkdir_p1(NEWROOT "/dev/shm", 01777));
    snprintf(opts, sizeof opts, "mode=1777,size=%lu", cfg->tmp_size_bytes);
    STEP("mount /dev/shm", mount("tmpfs", NEWROOT "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, opts));
    if (cfg->zygote) {
        // A user namespace may mount a new procfs only where one is already
        // fully visible; every /proc above is partly masked. The sandboxes this
        // zygote nests start from a copy of its mounts, so one unmasked procfs
        // here lets their agents mount their own /proc (they then detach this
        // tree with the old root). Only the zygote's processes show in it.
        STEP("mkdir /dev/.sandpit-proc", mkdir_p1(NEWROOT "/dev/.sandpit-proc", 0555));
        STEP("mount /dev/.sandpit-proc", mount("proc", NEWROOT "/dev/.sandpit-proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL));
    }
    STEP("link /dev/fd", symlink("/proc/self/fd", NEWROOT "/dev/fd"));
    STEP("link /dev/stdin", symlink("/proc/self/fd/0", NEWROOT "/dev/stdin"));
    STEP("link /dev/stdout", symlink("/proc/self/fd/1", NEWROOT "/dev/stdout"));
    STEP("link /dev/stderr", symlink("/proc/self/fd/2", NEWROOT "/dev/stderr"));

    STEP("mkdir /tmp", mkdir_p1(NEWROOT "/tmp", 01777));
    STEP("mount /tmp", mount("tmpfs", NEWROOT "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts));

    // pivot_root(".", ".") stacks the old root under the new one; detaching it
    // leaves the sandbox with no path back to the host's mount tree.
    STEP("chdir new root", chdir(NEWROOT));
    STEP("pivot_root", (int)syscall(SYS_pivot_root, ".", "."));
    STEP("detach old root", umount2(".", MNT_DETACH));
    STEP("chdir /", chdir("/"));
    if (cfg->hostname) STEP("sethostname", sethostname(cfg->hostname, strlen(cfg->hostname)));
    return 0;
}
