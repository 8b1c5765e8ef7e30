#define _GNU_SOURCE
#include <malloc.h>
#include "sp_sys.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <stddef.h>
#include <sys/socket.h>
#include <unistd.h>

int sp_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
int sp_socketpair_cloexec(int fds[2]) { return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds); }
int sp_open_path(const char *path) { return open(path, O_PATH | O_CLOEXEC); }
int sp_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }
int sp_punch_hole(int fd, long long offset, long long length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
}

int sp_send_fds(int sock, const int *fds, int n) {
    if (n <= 0 || n > 16) { errno = EINVAL; return -1; }
    char byte = 0;
    struct iovec io = { &byte, 1 };
    union { char buf[CMSG_SPACE(sizeof(int) * 16)]; struct cmsghdr align; } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n) };
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)n);
    ssize_t r;
    do { r = sendmsg(sock, &m, MSG_NOSIGNAL); } while (r < 0 && errno == EINTR);
    return r == 1 ? 0 : -1;
}

int sp_recv_fds(int sock, int *fds, int max, int timeout_ms) {
    if (max <= 0 || max > 16) { errno = EINVAL; return -1; }
    struct pollfd p = { .fd = sock, .events = POLLIN, .revents = 0 };
    int n;
    do { n = poll(&p, 1, timeout_ms); } while (n < 0 && errno == EINTR);
    if (n <= 0) { if (n == 0) errno = ETIMEDOUT; return -1; }
    char byte;
    struct iovec io = { &byte, 1 };
    union { char buf[CMSG_SPACE(sizeof(int) * 16)]; struct cmsghdr align; } u;
    struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)max) };
    ssize_t r;
    do { r = recvmsg(sock, &m, MSG_CMSG_CLOEXEC); } while (r < 0 && errno == EINTR);
    if (r <= 0) { if (r == 0) errno = ECONNRESET; return -1; }
    int got = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + (size_t)i * sizeof(int), sizeof fd);
            if (got < max) fds[got++] = fd; else close(fd);
        }
    }
    if (m.msg_flags & MSG_CTRUNC) {   // some were dropped: the set is not what was sent
        for (int i = 0; i < got; i++) close(fds[i]);
        errno = EBADMSG;
        return -1;
    }
    return got;
}

int sp_malloc_trim(void) { return malloc_trim(0); }

int sp_pidfd_open_probe(void) {
    long fd = syscall(434 /* SYS_pidfd_open */, getpid(), 0);
    if (fd < 0) return 0;
    close((int)fd);
    return 1;
}

int sp_openat2_probe(void) {
    struct { unsigned long long flags, mode, resolve; } how = { O_RDONLY | O_CLOEXEC | O_DIRECTORY, 0, 0x10 /* RESOLVE_IN_ROOT */ };
    long fd = syscall(437 /* SYS_openat2 */, AT_FDCWD, "/", &how, sizeof how);
    if (fd < 0) return 0;
    close((int)fd);
    return 1;
}

int sp_write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t len = strlen(text);
    ssize_t w = write(fd, text, len);
    int e = errno;
    close(fd);
    if (w != (ssize_t)len) { errno = w < 0 ? e : EIO; return -1; }
    return 0;
}
