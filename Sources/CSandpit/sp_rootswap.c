// An in-place restore swaps a live sandbox's root filesystem while some of
// its processes (the agent, PID 1, and frozen interpreter copies) keep
// running. It runs on a throwaway daemon thread with full privileges that
// joins the sandbox's mount namespace; the sandbox itself cannot mount
// (seccomp, no capabilities). The mounts carried over are the ones
// sp_agent_mounts.c made at start.
#define _GNU_SOURCE
#include "sp_rootswap.h"
#include "sp_mountapi.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define STEP(name, expr) do { *step = (name); if ((expr) < 0) goto fail; } while (0)

static int move_to(int from, int root, const char *name) {
    if (mkdirat(root, name, 0755) != 0 && errno != EEXIST) return -1;
    return sp_move_mount_at(from, root, name);
}

int sp_swap_root(int mntns_fd, int newroot_fd, int move_usr, const char *tmp_opts, const char **step) {
    int usr = -1, proc = -1, dev = -1, err = 0;
    STEP("unshare fs", unshare(CLONE_FS));
    STEP("join the sandbox's mount namespace", setns(mntns_fd, CLONE_NEWNS));
    // O_PATH handles on the mounts to carry over, taken before anything moves.
    if (move_usr) STEP("open /usr", usr = sp_open_tree_path("/usr"));
    STEP("open /proc", proc = sp_open_tree_path("/proc"));
    STEP("open /dev", dev = sp_open_tree_path("/dev"));
    // The new root goes on top of the old one; pivot_root(".", ".") then
    // stacks the old root under it and detaching that leaves only the new tree.
    STEP("attach the restored root", sp_move_mount_fd(newroot_fd, "/"));
    STEP("enter the restored root", fchdir(newroot_fd));
    if (move_usr) STEP("move /usr", move_to(usr, newroot_fd, "usr"));
    STEP("move /proc", move_to(proc, newroot_fd, "proc"));
    STEP("move /dev", move_to(dev, newroot_fd, "dev"));
    // /tmp and /dev/shm hold memory, not checkpointed files: a restore starts them empty, as a fresh sandbox does.
    STEP("mkdir /tmp", (mkdirat(newroot_fd, "tmp", 01777) == 0 || errno == EEXIST) ? 0 : -1);
    STEP("mount /tmp", mount("tmpfs", "tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts));
    STEP("detach /dev/shm", umount2("dev/shm", MNT_DETACH | UMOUNT_NOFOLLOW));
    STEP("mount /dev/shm", mount("tmpfs", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts));
    STEP("pivot_root", (int)syscall(SYS_pivot_root, ".", "."));
    STEP("detach the old root", umount2(".", MNT_DETACH));
    STEP("chdir /", chdir("/"));
    *step = NULL;
    goto out;
fail:
    err = errno;
out:
    if (usr >= 0) close(usr);
    if (proc >= 0) close(proc);
    if (dev >= 0) close(dev);
    if (err) { errno = err; return -1; }
    return 0;
}
