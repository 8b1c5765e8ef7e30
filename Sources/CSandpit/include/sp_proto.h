// Wire format between the daemon and the in-sandbox agent (PID 1).
// Both ends run on the same host, so integers are in host byte order.
// Every frame is a fixed 12-byte header followed by `length` payload bytes.
#ifndef SP_PROTO_H
#define SP_PROTO_H
#include <stdint.h>

#define SP_FRAME_HEADER_SIZE 12u
#define SP_FRAME_MAX_PAYLOAD 4194304u
#define SP_OUTPUT_CHUNK 65536u

// Fixed descriptor numbers inside the agent.
#define SP_AGENT_FD_CTRL 3
#define SP_AGENT_FD_ROOT 4
#define SP_AGENT_FD_USR 5
#define SP_AGENT_FD_CGROUP 6   // optional: delegated cgroup dir for per-exec groups
#define SP_AGENT_FD_NEST 7     // zygote agents only: the daemon passes a nested sandbox's descriptors here
#define SP_AGENT_FD_DEV 8      // optional: the sandbox's own /dev (a tmpfs with its device nodes, made by the daemon)

enum sp_frame_type {
    // daemon -> agent
    SP_FRAME_SPAWN = 1,   // id = exec id; payload = sp_spawn_header + strings
    SP_FRAME_STDIN = 2,   // id = exec id; data; empty payload = close stdin
    SP_FRAME_SIGNAL = 3,  // id = exec id; payload = int32 signal number
    SP_FRAME_STATS = 4,   // id = request id; no payload
    SP_FRAME_RESTORE = 5, // id = request id; payload = uint32 n, n x sp_adopt, then int32 pids to keep:
                          // kill every other process, drain output, answer RESTORED
    SP_FRAME_SIGNAL_PID = 6, // payload = int32 pid, int32 signal (sent by PID 1)
    SP_FRAME_RESIZE = 8,  // id = exec id; payload = uint16 rows, uint16 cols: a PTY exec's window size (SIGWINCH)
    SP_FRAME_NEST = 7,    // zygote agents only. id = request id; payload = sp_nest_header + argv strings;
                          // descriptors on SP_AGENT_FD_NEST (see sp_nest_header): start a nested sandbox's agent
    // agent -> daemon
    SP_FRAME_READY = 64,       // payload = sp_stats
    SP_FRAME_FATAL = 65,       // payload = text "step: error"
    SP_FRAME_STARTED = 66,     // id = exec id; payload = int32 pid (inside the sandbox)
    SP_FRAME_SPAWN_ERROR = 67, // id = exec id; payload = int32 errno + text
    SP_FRAME_OUTPUT = 68,      // id = exec id; stream = 1 stdout, 2 stderr, 3 a PTY; data
    SP_FRAME_EXITED = 69,      // id = exec id; payload = int32 wait status
    SP_FRAME_STATS_REPLY = 70, // id = request id; payload = sp_stats
    SP_FRAME_RESTORED = 71,    // id = request id; payload = int32 killed, int32 still alive
    SP_FRAME_INPUT_ACK = 73,   // id = exec id; payload = uint64 bytes of STDIN data written to the command so far
    SP_FRAME_NESTED = 72,      // id = request id; payload = int32 pid (in the zygote) or -errno, then text;
                               // on success the child's pidfd follows on SP_AGENT_FD_NEST
};

struct sp_frame_header {
    uint32_t length;
    uint8_t type;
    uint8_t stream;
    uint16_t reserved;
    uint32_t id;
};

// SPAWN payload: this header, then NUL-terminated strings:
// cwd, argv[0..argc), envp[0..envc).
struct sp_spawn_header {
    uint32_t uid;
    uint32_t gid;
    uint32_t flags; // SP_SPAWN_*
    uint32_t argc;
    uint32_t envc;
    uint32_t winsize; // SP_SPAWN_PTY: rows << 16 | cols
};
#define SP_SPAWN_STDIN 1u   // keep a stdin pipe open for STDIN frames; else stdin is /dev/null
#define SP_SPAWN_PLACEHOLDER 2u // exec nothing: the child waits, holding the exec's pipes, until a
                                // process forked from a zygote takes them over (RESTORE adopts it)
#define SP_SPAWN_ROOT_CAPS 8u // uid 0 only: keep sp_root_caps (a container root's) through execve
#define SP_SPAWN_PTY 4u     // run on a new pseudo-terminal of the sandbox's devpts (its controlling
                            // terminal, a new session); output comes as stream 3, STDIN frames are typed
                            // into it, RESIZE sets its window size

// NEST: a sandbox whose user and pid namespaces nest in this zygote's. Its
// descriptors arrive in one message on SP_AGENT_FD_NEST, in this order:
// control socket, root mount, [/usr mount], [cgroup dir], agent executable,
// go-ahead pipe (the child waits for one byte on it before it execs).
struct sp_nest_header {
    uint32_t id_count;   // ids mapped 1:1 from this namespace into the nested one
    uint32_t fd_mask;    // SP_NEST_USR | SP_NEST_CGROUP | SP_NEST_DEV: which optional descriptors came
    uint32_t argc;       // then argc NUL-terminated argv strings
};
#define SP_NEST_USR 1u
#define SP_NEST_CGROUP 2u
#define SP_NEST_DEV 4u

// RESTORE: exec `exec`'s main process becomes `pid` (a process that outlives
// the old one, e.g. a frozen interpreter copy), so its end ends the exec.
struct sp_adopt {
    uint32_t exec;
    int32_t pid;
};

struct sp_stats {
    uint64_t rss_bytes;
    uint32_t live_execs;
    uint32_t reserved;
};

#endif
