// Sockets made inside a sandbox's network namespace. setns(CLONE_NEWNET)
// changes only the calling thread, and a thread may not always go back: a
// rootless daemon may enter a sandbox's namespace (its user namespace owns
// it) but not return to the host's (the init user namespace owns that). So
// each socket is made on a short-lived thread that enters the namespace,
// makes it, and ends; the descriptor outlives the thread.
#define _GNU_SOURCE
#include "sp_netns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct job {
    int nsfd;
    int family;
    int listen_port;   // > 0: bind 127.0.0.1:port and listen
    int fd;
    int err;
};

static void *in_netns(void *p) {
    struct job *j = p;
    if (setns(j->nsfd, CLONE_NEWNET) != 0) { j->err = errno; return NULL; }
    int fd = socket(j->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { j->err = errno; return NULL; }
    if (j->listen_port > 0) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons((unsigned short)j->listen_port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) { j->err = errno; close(fd); return NULL; }
    }
    j->fd = fd;
    return NULL;
}

static int run(struct job *j) {
    j->fd = -1;
    j->err = 0;
    pthread_t t;
    int rc = pthread_create(&t, NULL, in_netns, j);
    if (rc != 0) { errno = rc; return -1; }
    pthread_join(t, NULL);
    if (j->fd < 0) { errno = j->err ? j->err : EIO; return -1; }
    return j->fd;
}

int sp_listen_in_netns(int nsfd, unsigned short port) {
    struct job j = { .nsfd = nsfd, .family = AF_INET, .listen_port = port };
    return run(&j);
}

int sp_socket_in_netns(int nsfd, int family) {
    struct job j = { .nsfd = nsfd, .family = family, .listen_port = 0 };
    return run(&j);
}
