#define _GNU_SOURCE
#include "sp_loop.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <unistd.h>

int sp_loop_attach(int backing_fd, char *dev, size_t devlen) {
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) return -1;
    // Another process may take the free device between GET_FREE and CONFIGURE: retry.
    for (int attempt = 0; attempt < 64; attempt++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) { int e = errno; close(ctl); errno = e; return -1; }
        snprintf(dev, devlen, "/dev/loop%d", n);
        int fd = open(dev, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT) { mknod(dev, S_IFBLK | 0660, makedev(7, (unsigned)n)); fd = open(dev, O_RDWR | O_CLOEXEC); }
            if (fd < 0) { int e = errno; close(ctl); errno = e; return -1; }
        }
        struct loop_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.fd = (unsigned)backing_fd;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
        if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) { close(ctl); return fd; }
        int e = errno;
        close(fd);
        if (e != EBUSY) { close(ctl); errno = e; return -1; }
    }
    close(ctl);
    errno = EBUSY;
    return -1;
}

int sp_copy_sparse(int in_fd, int out_fd) {
    struct stat st;
    if (fstat(in_fd, &st) != 0 || ftruncate(out_fd, st.st_size) != 0) return -1;
    off_t pos = 0;
    while (pos < st.st_size) {
        off_t data = lseek(in_fd, pos, SEEK_DATA);
        if (data < 0) { if (errno == ENXIO) break; return -1; }
        off_t hole = lseek(in_fd, data, SEEK_HOLE);
        if (hole < 0) return -1;
        off64_t src = data, dst = data;
        size_t left = (size_t)(hole - data);
        while (left > 0) {
            ssize_t n = copy_file_range(in_fd, &src, out_fd, &dst, left, 0);
            if (n < 0) { if (errno == EINTR) continue; return -1; }
            if (n == 0) break;
            left -= (size_t)n;
        }
        pos = hole;
    }
    return 0;
}
