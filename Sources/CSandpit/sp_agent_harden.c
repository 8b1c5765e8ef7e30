// Privilege reduction for everything the agent will spawn.
// The agent keeps its own capabilities (it must setuid its children), but:
// - the bounding set keeps only sp_root_caps (what a uid-0 command gets as
//   ambient capabilities, sp_agent_exec.c), so no exec can gain anything else,
//   and a command of any other uid gains nothing (no_new_privs and NOROOT);
// - SECBIT_NOROOT(+LOCKED): uid 0 gains nothing on exec either;
// - no_new_privs: setuid/setgid/file-capability bits are ignored;
// - not dumpable: sandbox processes cannot ptrace or read the agent's memory.
#define _GNU_SOURCE
#include "sp_agent.h"

#include <errno.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <sys/prctl.h>

int sp_agent_harden(const char **step) {
    *step = "drop bounding capabilities";
    for (int cap = 0; cap <= 63; cap++) {
        int kept = 0;
        for (int i = 0; i < sp_root_caps_count; i++) kept |= sp_root_caps[i] == cap;
        if (!kept && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    }
    *step = "clear ambient capabilities";
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) return -1;
    *step = "securebits";
    if (prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED, 0, 0, 0) != 0) return -1;
    *step = "no_new_privs";
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    *step = "not dumpable";
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return -1;
    return 0;
}
