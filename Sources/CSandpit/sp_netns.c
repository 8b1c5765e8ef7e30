#define _GNU_SOURCE
#include "sp_netns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int sp_listen_in_netns(int nsfd, unsigned short port) {
    int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0) return -1;
    if (setns(nsfd, CLONE_NEWNET) != 0) { int e = errno; close(home); errno = e; return -1; }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int err = fd < 0 ? errno : 0;
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) { err = errno; close(fd); fd = -1; }
    }
    if (setns(home, CLONE_NEWNET) != 0) { close(home); if (fd >= 0) close(fd); errno = EINVAL; return -2; }
    close(home);
    if (fd < 0) errno = err;
    return fd;
}

int sp_socket_in_netns(int nsfd, int family) {
    int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0) return -1;
    if (setns(nsfd, CLONE_NEWNET) != 0) { int e = errno; close(home); errno = e; return -1; }
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int err = fd < 0 ? errno : 0;
    if (setns(home, CLONE_NEWNET) != 0) { close(home); if (fd >= 0) close(fd); errno = EINVAL; return -2; }
    close(home);
    if (fd < 0) errno = err;
    return fd;
}
