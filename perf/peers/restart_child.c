/* The child that pipevisor, supervisord and circus restart in perf's peer cases
 * (perf/cases/peers_daemons.py, issue #20).
 *
 *   restart_child idle  [SOCKET]   announce, then sleep until killed
 *   restart_child serve [SOCKET]   announce, then be plugins/c_echo_plugin.c
 *
 * "Announce" is the first thing main() does: one datagram to the Unix datagram
 * socket SOCKET (skipped when SOCKET is absent or "-"), reading
 *   "<pid> <CLOCK_MONOTONIC in ns>\n".
 * The harness stamps its kill with the same clock, so "kill -> replacement
 * started" is the child's own stamp minus the harness's, whatever the harness
 * was busy with when the datagram arrived.  CLOCK_MONOTONIC is shared across pid
 * namespaces (pvinit makes no time namespace), so the stamp is also valid for
 * pipevisor's contained plugins; their pid is the namespace's, and unused.
 *
 * idle is for supervisord and circus, which speak no protocol to their children.
 * serve is for pipevisor, which needs the handshake: it is the scale benchmark's
 * C plugin itself, compiled in below with its main() renamed (build with
 * -DPLUGIN_SRC_HASH=<hash of that file> so the cached binary follows it).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define main c_echo_plugin_main
#include "../plugins/c_echo_plugin.c"
#undef main

static void announce(const char *path) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (path == NULL || strcmp(path, "-") == 0) return;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) return;
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    char msg[64];
    int n = snprintf(msg, sizeof msg, "%ld %lld\n", (long)getpid(),
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    /* best effort: a harness that stopped listening must not stop the child */
    (void)sendto(fd, msg, (size_t)n, 0, (struct sockaddr *)&addr, sizeof addr);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s idle|serve [SOCKET]\n", argv[0]);
        return 2;
    }
    announce(argc > 2 ? argv[2] : NULL);
    if (strcmp(argv[1], "serve") == 0) return c_echo_plugin_main();
    if (strcmp(argv[1], "idle") != 0) {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    for (;;) pause();
}
