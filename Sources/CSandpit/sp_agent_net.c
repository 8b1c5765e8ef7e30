// A fresh network namespace has only a loopback device, and it is down.
#define _GNU_SOURCE
#include "sp_agent.h"

#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

int sp_agent_setup_network(const char **step) {
    *step = "loopback socket";
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    *step = "loopback flags";
    if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) { close(s); return -1; }
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    *step = "loopback up";
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) { close(s); return -1; }
    close(s);
    return 0;
}
