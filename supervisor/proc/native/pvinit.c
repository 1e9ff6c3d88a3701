/*
 * pvinit - containment shim exec'd by the pipevisor supervisor in place of a
 * plugin:
 *
 *     pvinit [--ns|--no-ns] --parent PID [--rlimit NAME=N ...] [PRIVILEGES...]
 *            -- /path/to/plugin args...
 *     pvinit --probe-ns        (exit 0: pid ns, 4: user+pid ns, 2: none)
 *
 * Two tiny processes sit above the plugin:
 *
 *   outer  (the pid the supervisor sees)  dies with the supervisor
 *          (PDEATHSIG=SIGKILL), forwards signals to `inner`, and finally
 *          exits exactly like the plugin did so the supervisor sees the true
 *          exit code / signal.
 *   inner  pid 1 of a fresh pid namespace when one can be had: dies with
 *          `outer` (PDEATHSIG) and its death makes the kernel SIGKILL every
 *          process left in the namespace, however it daemonized.  Without a
 *          namespace it is a child subreaper, so even setsid + double-fork
 *          orphans stay its descendants; it kills them by walking /proc when
 *          the plugin exits or when `outer` disappears.
 *
 * stdin/stdout/stderr belong to the plugin (protocol pipes, log pipe): this
 * program never writes to stdout; diagnostics go to stderr as "pvinit: ...".
 * Each pvinit process puts /dev/null on its fds 0-2 as soon as it has forked
 * the process below it (drop_stdio), so the plugin holds the only copies of
 * its pipes: when it closes its stdout or stdin, the supervisor sees EOF or
 * EPIPE at once, as without the shim.  Diagnostics after that hand-over are
 * lost; only "gave up killing descendants" can come that late.
 * Only libc; all waiting is done with sigwaitinfo() on blocked signals, so no
 * code runs in signal handlers.
 *
 * --rlimit NAME=N (NAME: core, nofile, data, as) sets soft and hard limit N
 * in the plugin process just before exec (never above the current hard
 * limit), so that pvinit itself is not constrained: the kernel backstop of
 * pipevisor's resource limits (docs/limits.md).
 *
 * Every fd above 2 is closed first thing: the supervisor may exec pvinit from
 * a sealed memfd (argv[0] = /proc/self/fd/N), and nothing of that, or of
 * anything else inherited, may reach the plugin.
 *
 * PRIVILEGES, applied in the plugin process only, after the rlimits, in this
 * order (pvinit itself keeps its own, so that it can still kill the tree):
 *   --ll-*        build a Landlock ruleset (paths opened while still privileged)
 *   --user UID / --group GID
 *                 setgroups(0) (no supplementary groups), setgid, setuid; not
 *                 root and asked for other ids: refused
 *   --nnp         prctl(PR_SET_NO_NEW_PRIVS): exec can never gain privileges
 *   then landlock_restrict_self() and exec.
 * Landlock options: --landlock (restrict file writes), --ll-restrict read|bind|
 * connect (also restrict reads, TCP bind, TCP connect), --ll-read PATH,
 * --ll-write PATH (write implies read), --ll-bind PORT, --ll-connect PORT.
 * Any failure here is "pvinit: ..." on stderr and exit 126: the plugin never
 * runs with less containment than it was asked for.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_SET_CHILD_SUBREAPER
#define PR_SET_CHILD_SUBREAPER 36
#endif

/* Exit code for misuse of pvinit itself (bad command line). */
#define EXIT_USAGE 125
/* Exit code when the plugin's privileges or sandbox cannot be set up. */
#define EXIT_PRIVS 126
/* Inner's parent-death signal without a namespace: it must be catchable so
 * the inner can kill the tree before going; it is not in the forward list. */
#define ORPHAN_SIG SIGALRM

static const int forwarded[] = {SIGTERM, SIGINT,  SIGHUP,  SIGQUIT,
                                SIGUSR1, SIGUSR2, SIGCONT, SIGWINCH};
#define N_FORWARDED (sizeof forwarded / sizeof forwarded[0])

static void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Resource limits applied to the plugin before exec (from --rlimit). */
#define MAX_RLIMITS 8
static struct {
    int resource;
    rlim_t value;
} rlimits[MAX_RLIMITS];
static int n_rlimits;

static int parse_rlimit(const char *arg)
{
    static const struct {
        const char *name;
        int resource;
    } names[] = {{"core", RLIMIT_CORE}, {"nofile", RLIMIT_NOFILE},
                 {"data", RLIMIT_DATA}, {"as", RLIMIT_AS}};
    const char *eq = strchr(arg, '=');
    if (eq == NULL || n_rlimits >= MAX_RLIMITS)
        return -1;
    char *end;
    errno = 0;
    unsigned long long value = strtoull(eq + 1, &end, 10);
    if (*end != '\0' || end == eq + 1 || errno != 0)
        return -1;
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        if (strlen(names[k].name) == (size_t)(eq - arg) &&
            strncmp(arg, names[k].name, (size_t)(eq - arg)) == 0) {
            rlimits[n_rlimits].resource = names[k].resource;
            rlimits[n_rlimits].value = (rlim_t)value;
            n_rlimits++;
            return 0;
        }
    }
    return -1;
}

static void apply_rlimits(void)
{
    for (int k = 0; k < n_rlimits; k++) {
        struct rlimit cur, want;
        if (getrlimit(rlimits[k].resource, &cur) != 0)
            continue;
        rlim_t value = rlimits[k].value;
        if (cur.rlim_max != RLIM_INFINITY && value > cur.rlim_max)
            value = cur.rlim_max;
        want.rlim_cur = want.rlim_max = value;
        if (setrlimit(rlimits[k].resource, &want) != 0)
            diag("setrlimit(%d, %llu): %s", rlimits[k].resource,
                 (unsigned long long)value, strerror(errno));
    }
}

/* ---- inherited fds ------------------------------------------------------ */

#ifndef __NR_close_range
#define __NR_close_range 436
#endif

/* Close every fd above 2 (the memfd pvinit was exec'd from, anything else a
 * careless parent passed): the plugin gets its three pipes and nothing more. */
static void close_inherited_fds(void)
{
    if (syscall(__NR_close_range, 3U, ~0U, 0U) == 0)
        return;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL) {
        for (int fd = 3; fd < 65536; fd++)
            close(fd);
        return;
    }
    int own = dirfd(d);
    int fds[1024], n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < (int)(sizeof fds / sizeof fds[0])) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        int fd = atoi(e->d_name);
        if (fd > 2 && fd != own)
            fds[n++] = fd;
    }
    closedir(d);
    for (int k = 0; k < n; k++)
        close(fds[k]);
}

/* ---- privileges --------------------------------------------------------- */

static long want_uid = -1, want_gid = -1;
static int want_nnp;

static int parse_id(const char *text, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (*end != '\0' || end == text || errno != 0 || v < 0 || v > 0x7fffffffL)
        return -1;
    *out = v;
    return 0;
}

/* setgroups(0), setgid, setuid, in that order; then prove they took. */
static void drop_privileges(void)
{
    if (want_uid < 0 && want_gid < 0)
        return;
    uid_t uid = want_uid >= 0 ? (uid_t)want_uid : geteuid();
    gid_t gid = want_gid >= 0 ? (gid_t)want_gid : getegid();
    if (geteuid() != 0) {
        if (uid != geteuid() || uid != getuid() || gid != getegid() || gid != getgid()) {
            diag("cannot run the plugin as uid %u gid %u: pvinit runs as uid %u, not root",
                 (unsigned)uid, (unsigned)gid, (unsigned)geteuid());
            _exit(EXIT_PRIVS);
        }
        return;
    }
    if (setgroups(0, NULL) != 0) {
        diag("setgroups(0): %s", strerror(errno));
        _exit(EXIT_PRIVS);
    }
    if (setresgid(gid, gid, gid) != 0) {
        diag("setgid(%u): %s", (unsigned)gid, strerror(errno));
        _exit(EXIT_PRIVS);
    }
    if (setresuid(uid, uid, uid) != 0) {
        diag("setuid(%u): %s", (unsigned)uid, strerror(errno));
        _exit(EXIT_PRIVS);
    }
    if (getuid() != uid || geteuid() != uid || getgid() != gid || getegid() != gid ||
        getgroups(0, NULL) != 0 || (uid != 0 && setuid(0) == 0)) {
        diag("privileges not dropped to uid %u gid %u", (unsigned)uid, (unsigned)gid);
        _exit(EXIT_PRIVS);
    }
}

/* ---- Landlock ------------------------------------------------------------
 * Own definitions (uapi names prefixed pv_), so that pvinit builds with old
 * kernel headers too; the ABI is probed at run time. */

#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#endif
#ifndef __NR_landlock_add_rule
#define __NR_landlock_add_rule 445
#endif
#ifndef __NR_landlock_restrict_self
#define __NR_landlock_restrict_self 446
#endif

struct pv_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
};
struct pv_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));
struct pv_net_port_attr {
    uint64_t allowed_access;
    uint64_t port;
};

#define PV_CREATE_RULESET_VERSION (1U << 0)
#define PV_RULE_PATH_BENEATH 1
#define PV_RULE_NET_PORT 2
#define PV_FS_EXECUTE (1ULL << 0)
#define PV_FS_WRITE_FILE (1ULL << 1)
#define PV_FS_READ_FILE (1ULL << 2)
#define PV_FS_READ_DIR (1ULL << 3)
#define PV_FS_TRUNCATE (1ULL << 14)
#define PV_FS_IOCTL_DEV (1ULL << 15)
#define PV_NET_BIND_TCP (1ULL << 0)
#define PV_NET_CONNECT_TCP (1ULL << 1)
/* Rights that make sense on a file rather than a folder. */
#define PV_FS_FILE_RIGHTS \
    (PV_FS_EXECUTE | PV_FS_WRITE_FILE | PV_FS_READ_FILE | PV_FS_TRUNCATE | PV_FS_IOCTL_DEV)
#define PV_FS_READ_RIGHTS (PV_FS_EXECUTE | PV_FS_READ_FILE | PV_FS_READ_DIR)

#define MAX_LL_RULES 64
static int want_landlock, ll_read_restricted, ll_bind_restricted, ll_connect_restricted;
static const char *ll_read[MAX_LL_RULES], *ll_write[MAX_LL_RULES];
static int n_ll_read, n_ll_write;
static long ll_bind[MAX_LL_RULES], ll_connect[MAX_LL_RULES];
static int n_ll_bind, n_ll_connect;

/* Every file-system right the running kernel's ABI knows. */
static uint64_t fs_rights_for_abi(int abi)
{
    uint64_t all = (1ULL << 13) - 1; /* ABI 1: EXECUTE .. MAKE_SYM */
    if (abi >= 2)
        all |= 1ULL << 13; /* REFER */
    if (abi >= 3)
        all |= PV_FS_TRUNCATE;
    if (abi >= 5)
        all |= PV_FS_IOCTL_DEV;
    return all;
}

static void ll_fail(const char *what, const char *path)
{
    diag("landlock sandbox: %s%s%s: %s", what, path ? " " : "", path ? path : "",
         strerror(errno));
    _exit(EXIT_PRIVS);
}

static void ll_add_path(int ruleset, const char *path, uint64_t allowed)
{
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0)
        ll_fail("cannot open", path);
    struct stat st;
    if (fstat(fd, &st) != 0)
        ll_fail("cannot stat", path);
    if (!S_ISDIR(st.st_mode))
        allowed &= PV_FS_FILE_RIGHTS;
    struct pv_path_beneath_attr rule = {allowed, fd};
    if (allowed != 0 && syscall(__NR_landlock_add_rule, ruleset, PV_RULE_PATH_BENEATH, &rule, 0) != 0)
        ll_fail("cannot add a rule for", path);
    close(fd);
}

static void ll_add_port(int ruleset, long port, uint64_t allowed)
{
    struct pv_net_port_attr rule = {allowed, (uint64_t)port};
    if (syscall(__NR_landlock_add_rule, ruleset, PV_RULE_NET_PORT, &rule, 0) != 0) {
        char text[24];
        snprintf(text, sizeof text, "%ld", port);
        ll_fail("cannot add a rule for port", text);
    }
}

/* Returns the ruleset fd (restricted later, after the privilege drop), or -1. */
static int landlock_prepare(void)
{
    if (!want_landlock)
        return -1;
    long abi = syscall(__NR_landlock_create_ruleset, NULL, 0, PV_CREATE_RULESET_VERSION);
    if (abi < 1)
        ll_fail("the kernel has no Landlock", NULL);
    int net = ll_bind_restricted || ll_connect_restricted;
    if (net && abi < 4) {
        diag("landlock sandbox: network rules need Landlock ABI 4, the kernel has %ld", abi);
        _exit(EXIT_PRIVS);
    }
    uint64_t all = fs_rights_for_abi((int)abi);
    uint64_t handled = all & ~(uint64_t)PV_FS_READ_RIGHTS;
    if (ll_read_restricted)
        handled |= PV_FS_READ_RIGHTS;
    struct pv_ruleset_attr attr = {handled, 0};
    if (ll_bind_restricted)
        attr.handled_access_net |= PV_NET_BIND_TCP;
    if (ll_connect_restricted)
        attr.handled_access_net |= PV_NET_CONNECT_TCP;
    size_t size = net ? sizeof attr : sizeof attr.handled_access_fs;
    int ruleset = (int)syscall(__NR_landlock_create_ruleset, &attr, size, 0U);
    if (ruleset < 0)
        ll_fail("cannot create a ruleset", NULL);
    for (int k = 0; k < n_ll_write; k++)
        ll_add_path(ruleset, ll_write[k], handled);
    for (int k = 0; k < n_ll_read; k++)
        ll_add_path(ruleset, ll_read[k], handled & PV_FS_READ_RIGHTS);
    for (int k = 0; k < n_ll_bind; k++)
        ll_add_port(ruleset, ll_bind[k], PV_NET_BIND_TCP);
    for (int k = 0; k < n_ll_connect; k++)
        ll_add_port(ruleset, ll_connect[k], PV_NET_CONNECT_TCP);
    return ruleset;
}

static void landlock_enforce(int ruleset)
{
    if (ruleset < 0)
        return;
    if (syscall(__NR_landlock_restrict_self, ruleset, 0U) != 0)
        ll_fail("cannot restrict the plugin", NULL);
    close(ruleset);
}

static int parse_port(const char *text, long *port)
{
    return parse_id(text, port) != 0 || *port > 65535 ? -1 : 0;
}

static int parse_privilege_option(int argc, char **argv, int *i)
{
    const char *opt = argv[*i];
    if (strcmp(opt, "--nnp") == 0) {
        want_nnp = 1;
        return 0;
    }
    if (strcmp(opt, "--landlock") == 0) {
        want_landlock = 1;
        return 0;
    }
    if (*i + 1 >= argc)
        return -1;
    const char *arg = argv[++*i];
    if (strcmp(opt, "--user") == 0)
        return parse_id(arg, &want_uid);
    if (strcmp(opt, "--group") == 0)
        return parse_id(arg, &want_gid);
    want_landlock = 1;
    if (strcmp(opt, "--ll-restrict") == 0) {
        if (strcmp(arg, "read") == 0)
            ll_read_restricted = 1;
        else if (strcmp(arg, "bind") == 0)
            ll_bind_restricted = 1;
        else if (strcmp(arg, "connect") == 0)
            ll_connect_restricted = 1;
        else
            return -1;
        return 0;
    }
    if (strcmp(opt, "--ll-read") == 0 && n_ll_read < MAX_LL_RULES) {
        ll_read_restricted = 1;
        ll_read[n_ll_read++] = arg;
        return 0;
    }
    if (strcmp(opt, "--ll-write") == 0 && n_ll_write < MAX_LL_RULES) {
        ll_write[n_ll_write++] = arg;
        return 0;
    }
    if (strcmp(opt, "--ll-bind") == 0 && n_ll_bind < MAX_LL_RULES) {
        ll_bind_restricted = 1;
        return parse_port(arg, &ll_bind[n_ll_bind++]);
    }
    if (strcmp(opt, "--ll-connect") == 0 && n_ll_connect < MAX_LL_RULES) {
        ll_connect_restricted = 1;
        return parse_port(arg, &ll_connect[n_ll_connect++]);
    }
    return -1;
}

static void diag(const char *fmt, ...)
{
    char buf[512];
    int n = snprintf(buf, sizeof buf, "pvinit: ");
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    /* One write() so concurrent stderr writers do not interleave the line. */
    ssize_t ignored = write(STDERR_FILENO, buf, (size_t)n);
    (void)ignored;
}

static void noop_handler(int sig) { (void)sig; }

/* Give up this process's copies of the plugin's stdin, stdout and stderr once
 * the process below has its own.  fds 0-2 stay open, on /dev/null, so that
 * nothing opened later lands on them and a stray write goes nowhere. */
static void drop_stdio(void)
{
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd <= 2; fd++) {
        if (null < 0)
            close(fd);
        else if (fd != null)
            dup2(null, fd);
    }
    if (null > 2)
        close(null);
}

/* Block `set` and give each member a no-op handler: blocked signals are queued
 * even for a namespace init (which would otherwise drop SIG_DFL signals) and
 * are then collected synchronously with sigwaitinfo(). */
static void take_signals(const sigset_t *set)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = noop_handler;
    sigfillset(&sa.sa_mask);
    for (int s = 1; s < NSIG; s++)
        if (sigismember(set, s) == 1)
            sigaction(s, &sa, NULL);
    sigprocmask(SIG_BLOCK, set, NULL);
}

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = strlen(text);
    ssize_t w = write(fd, text, len);
    int saved = errno;
    close(fd);
    errno = saved;
    return w == (ssize_t)len ? 0 : -1;
}

/* Returns 1 (pid ns), 2 (user+pid ns) or 0 (none, reason on stderr). */
static int enter_pidns(void)
{
    if (unshare(CLONE_NEWPID) == 0)
        return 1;
    int first = errno;
    if (first == EPERM || first == EINVAL) {
        uid_t uid = geteuid();
        gid_t gid = getegid();
        if (unshare(CLONE_NEWUSER | CLONE_NEWPID) == 0) {
            char map[64];
            int ok = write_file("/proc/self/setgroups", "deny") == 0 || errno == ENOENT;
            snprintf(map, sizeof map, "%u %u 1\n", (unsigned)uid, (unsigned)uid);
            ok = write_file("/proc/self/uid_map", map) == 0 && ok;
            snprintf(map, sizeof map, "%u %u 1\n", (unsigned)gid, (unsigned)gid);
            ok = write_file("/proc/self/gid_map", map) == 0 && ok;
            if (!ok)
                diag("user namespace id maps not written (%s); plugin sees overflow ids",
                     strerror(errno));
            return 2;
        }
        diag("no pid namespace (unshare: %s; with user namespace: %s); "
             "using session+pdeathsig containment",
             strerror(first), strerror(errno));
    } else {
        diag("no pid namespace (unshare: %s); using session+pdeathsig containment",
             strerror(first));
    }
    return 0;
}

/* ---- /proc walking, used only without a namespace ---------------------- */

struct proc_entry {
    pid_t pid;
    pid_t ppid;
    char state;
    char mark;
};

static size_t read_procs(struct proc_entry **out)
{
    size_t n = 0, cap = 0;
    struct proc_entry *v = NULL;
    DIR *d = opendir("/proc");
    if (!d) {
        *out = NULL;
        return 0;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        char path[64], buf[512];
        long pid = strtol(e->d_name, NULL, 10);
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (r <= 0)
            continue;
        buf[r] = '\0';
        char *close_paren = strrchr(buf, ')');
        char state;
        int ppid;
        if (!close_paren || sscanf(close_paren + 1, " %c %d", &state, &ppid) != 2)
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 256;
            struct proc_entry *nv = realloc(v, ncap * sizeof *nv);
            if (!nv)
                break;
            v = nv;
            cap = ncap;
        }
        v[n].pid = (pid_t)pid;
        v[n].ppid = (pid_t)ppid;
        v[n].state = state;
        v[n].mark = 0;
        n++;
    }
    closedir(d);
    *out = v;
    return n;
}

/* Send `sig` to every live descendant of this process; returns how many. */
static int signal_descendants(int sig)
{
    struct proc_entry *v;
    size_t n = read_procs(&v);
    pid_t self = getpid();
    int changed = 1, count = 0;
    while (changed) {
        changed = 0;
        for (size_t i = 0; i < n; i++) {
            if (v[i].mark)
                continue;
            if (v[i].ppid == self) {
                v[i].mark = 1;
                changed = 1;
                continue;
            }
            for (size_t j = 0; j < n; j++) {
                if (v[j].mark && v[j].pid == v[i].ppid) {
                    v[i].mark = 1;
                    changed = 1;
                    break;
                }
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i].mark && v[i].state != 'Z' && v[i].state != 'X') {
            if (kill(v[i].pid, sig) == 0)
                count++;
        }
    }
    free(v);
    return count;
}

static void reap_all_nohang(void)
{
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

/* Reap every zombie child (orphans land here too). Returns 1 and stores the
 * wait status when `target` was among them, 0 otherwise. */
static int reap_watching(pid_t target, int *status)
{
    int st, found = 0;
    pid_t r;
    while ((r = waitpid(-1, &st, WNOHANG)) > 0) {
        if (r == target) {
            *status = st;
            found = 1;
        }
    }
    return found;
}

/* Kill the whole subtree below this (subreaper) process and reap it.
 * Repeated because a process may fork while we walk; orphans of killed
 * processes are reparented to us, so the next pass sees them. */
static void kill_all_descendants(void)
{
    struct timespec ms = {0, 1000000};
    for (int pass = 0; pass < 5000; pass++) {
        reap_all_nohang();
        /* Subreaper: any live descendant has a live child of ours above it,
         * so having no children at all means there is nothing to walk. */
        if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD)
            return;
        int live = signal_descendants(SIGKILL);
        reap_all_nohang();
        if (live == 0)
            return;
        nanosleep(&ms, NULL);
    }
    diag("gave up killing descendants");
}

/* ---- exit status passthrough -------------------------------------------- */

static void exit_like(int status)
{
    if (WIFEXITED(status))
        _exit(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        sigset_t one;
        /* The plugin may have dumped core; pvinit must not add its own. */
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
        signal(sig, SIG_DFL);
        sigemptyset(&one);
        sigaddset(&one, sig);
        sigprocmask(SIG_UNBLOCK, &one, NULL);
        kill(getpid(), sig);
        _exit(128 + sig);
    }
    _exit(EXIT_USAGE);
}

/* ---- inner init -------------------------------------------------------- */

static void run_plugin(char **argv, const sigset_t *orig_mask, const sigset_t *taken,
                       int use_ns, pid_t inner_pid, pid_t outer_pid)
{
    if (use_ns) {
        setsid();
    } else {
        /* Own group inside the outer's session: killpg() on the plugin never
         * hits pvinit, and leftover cleanup can still find the session. */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (getppid() != inner_pid)
            _exit(1);
    }
    char tag[32];
    snprintf(tag, sizeof tag, "%ld", (long)outer_pid);
    setenv("PIPEVISOR_TREE", tag, 1);
    for (int s = 1; s < NSIG; s++)
        if (sigismember(taken, s) == 1)
            signal(s, SIG_DFL);
    sigprocmask(SIG_SETMASK, orig_mask, NULL);
    apply_rlimits();
    int ruleset = landlock_prepare();
    drop_privileges();
    if (want_nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        diag("prctl(PR_SET_NO_NEW_PRIVS): %s", strerror(errno));
        _exit(EXIT_PRIVS);
    }
    landlock_enforce(ruleset);
    execvp(argv[0], argv);
    diag("cannot exec %s: %s", argv[0], strerror(errno));
    _exit(127);
}

static void run_inner(int sock, char **argv, const sigset_t *orig_mask, int use_ns,
                      pid_t outer_pid)
{
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < N_FORWARDED; i++)
        sigaddset(&set, forwarded[i]);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, ORPHAN_SIG);
    take_signals(&set);

    prctl(PR_SET_PDEATHSIG, use_ns ? SIGKILL : ORPHAN_SIG, 0, 0, 0);
    /* If outer died before the prctl, its end of the socket is closed.  (In a
     * namespace getppid() is 0 whatever happens, so it cannot tell us.) */
    struct pollfd p = {sock, POLLIN, 0};
    if (poll(&p, 1, 0) != 0 || (!use_ns && getppid() != outer_pid))
        _exit(1);
    if (!use_ns)
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

    pid_t self = getpid();
    pid_t plugin = fork();
    if (plugin < 0) {
        diag("fork: %s", strerror(errno));
        _exit(EXIT_USAGE);
    }
    if (plugin == 0) {
        close(sock);
        run_plugin(argv, orig_mask, &set, use_ns, self, outer_pid);
    }
    drop_stdio();

    int plugin_status = 0;
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig < 0)
            continue;
        if (sig == SIGCHLD) {
            if (reap_watching(plugin, &plugin_status))
                break;
        } else if (sig == ORPHAN_SIG) {
            if (!use_ns && getppid() != outer_pid) {
                kill_all_descendants();
                _exit(1);
            }
        } else if (use_ns) {
            kill(-1, sig); /* everything in the namespace but us */
        } else {
            signal_descendants(sig);
        }
    }
    ssize_t w = write(sock, &plugin_status, sizeof plugin_status);
    (void)w;
    if (!use_ns)
        kill_all_descendants();
    /* With a namespace, our exit makes the kernel kill what is left. */
    _exit(0);
}

/* ---- outer ------------------------------------------------------------- */

static int probe_ns(void)
{
    int kind = enter_pidns();
    if (kind == 0)
        return 2;
    pid_t c = fork();
    if (c < 0) {
        diag("fork in new pid namespace: %s", strerror(errno));
        return 2;
    }
    if (c == 0)
        _exit(getpid() == 1 ? 0 : 3);
    int st;
    while (waitpid(c, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        diag("pid namespace probe child misbehaved");
        return 2;
    }
    return kind == 1 ? 0 : 4;
}

static void usage(void)
{
    diag("usage: pvinit [--ns|--no-ns] --parent PID [--rlimit NAME=N ...] [--user UID] "
         "[--group GID] [--nnp] [--landlock] [--ll-restrict read|bind|connect] "
         "[--ll-read PATH] [--ll-write PATH] [--ll-bind PORT] [--ll-connect PORT] "
         "-- PROGRAM [ARGS...]");
    _exit(EXIT_USAGE);
}

int main(int argc, char **argv)
{
    int use_ns = 0, i;
    long parent = -1;
    close_inherited_fds();
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ns") == 0) {
            use_ns = 1;
        } else if (strcmp(argv[i], "--no-ns") == 0) {
            use_ns = 0;
        } else if (strcmp(argv[i], "--probe-ns") == 0) {
            return probe_ns();
        } else if (strcmp(argv[i], "--parent") == 0 && i + 1 < argc) {
            char *end;
            parent = strtol(argv[++i], &end, 10);
            if (*end != '\0' || parent <= 0)
                usage();
        } else if (strcmp(argv[i], "--rlimit") == 0 && i + 1 < argc) {
            if (parse_rlimit(argv[++i]) != 0)
                usage();
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else if (strncmp(argv[i], "--", 2) == 0 && argv[i][2] != '\0') {
            if (parse_privilege_option(argc, argv, &i) != 0)
                usage();
        } else {
            usage();
        }
    }
    if (i >= argc)
        usage();
    char **plugin_argv = argv + i;

    sigset_t orig_mask, set;
    sigprocmask(SIG_SETMASK, NULL, &orig_mask);
    sigemptyset(&set);
    for (size_t k = 0; k < N_FORWARDED; k++)
        sigaddset(&set, forwarded[k]);
    sigaddset(&set, SIGCHLD);
    /* Blocked before fork: a signal arriving early is queued, not lost. */
    take_signals(&set);

    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (parent > 0 && getppid() != (pid_t)parent)
        _exit(1); /* supervisor already gone */

    if (use_ns)
        use_ns = enter_pidns() != 0;
    if (!use_ns) {
        setsid(); /* EPERM if the supervisor already made us a leader */
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        diag("socketpair: %s", strerror(errno));
        return EXIT_USAGE;
    }
    pid_t outer_pid = getpid();
    pid_t inner = fork();
    if (inner < 0) {
        diag("fork: %s", strerror(errno));
        return EXIT_USAGE;
    }
    if (inner == 0) {
        close(sv[0]);
        run_inner(sv[1], plugin_argv, &orig_mask, use_ns, outer_pid);
    }
    close(sv[1]);
    drop_stdio();

    int inner_status = 0;
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig < 0)
            continue;
        if (sig == SIGCHLD) {
            if (reap_watching(inner, &inner_status))
                break;
        } else {
            kill(inner, sig);
        }
    }

    int plugin_status;
    ssize_t got;
    do {
        got = read(sv[0], &plugin_status, sizeof plugin_status);
    } while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof plugin_status)
        plugin_status = inner_status; /* inner was killed before reporting */
    if (!use_ns && got != (ssize_t)sizeof plugin_status)
        kill_all_descendants(); /* orphans adopted when inner died abruptly */
    exit_like(plugin_status);
    return EXIT_USAGE;
}
