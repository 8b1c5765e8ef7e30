// Pseudo-terminals for PTY execs, from the sandbox's own devpts instance
// (mounted newinstance by sp_agent_mounts.c), opened by the agent (PID 1)
// after it has pivoted into the sandbox's root.
#include "sp_agent.h"
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

int sp_agent_open_pty(unsigned rows, unsigned cols, int *master, int *slave) {
    int m = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0) return -1;
    int unlock = 0;
    struct winsize ws = { .ws_row = (unsigned short)(rows ? rows : 24), .ws_col = (unsigned short)(cols ? cols : 80) };
    if (ioctl(m, TIOCSPTLCK, &unlock) != 0 || ioctl(m, TIOCSWINSZ, &ws) != 0) goto fail;
    // The slave through the master (no path lookup, so no race with the sandbox's /dev).
    int s = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (s < 0) goto fail;
    *master = m;
    *slave = s;
    return 0;
fail:;
    int e = errno;
    close(m);
    errno = e;
    return -1;
}

int sp_agent_resize_pty(int master, unsigned rows, unsigned cols) {
    struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
    return ioctl(master, TIOCSWINSZ, &ws);
}
