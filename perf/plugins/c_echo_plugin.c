/* A tiny pipevisor plugin in C for the scale benchmark (perf/cases/scale.py).
 *
 * Why it exists: 1,000 idle Python plugins would measure 1,000 interpreters
 * (about 10 MB each), not the supervisor.  This one costs a few hundred KB of
 * resident memory, so the figures are the supervisor's.
 *
 * It does not parse JSON.  It finds the request's "id" and "method" members by
 * text, which is enough for the messages pipevisor itself sends (ids are
 * integers, method names contain no escapes):
 *   pipevisor/handshake -> a fixed handshake result (protocol 1.0, method echo)
 *   pipevisor/ping      -> {}
 *   pipevisor/shutdown  -> null, then exit 0
 *   echo                -> {"ok":true}
 *   anything else       -> error -32601
 * Lines without an "id" (notifications) get no answer.  EOF on stdin -> exit 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *HANDSHAKE =
    "{\"protocolVersion\":\"1.0\",\"plugin\":{\"name\":\"c-echo\",\"version\":\"1.0\"},"
    "\"methods\":{\"echo\":{}},\"capabilities\":{\"shutdown\":true}}";

/* Copies the raw text of member `key` (a number or a string with its quotes)
 * into out; returns 0 when absent. */
static int member(const char *line, const char *key, char *out, size_t cap) {
    const char *p = strstr(line, key);
    if (!p) return 0;
    p += strlen(key);
    while (*p == ' ' || *p == ':') p++;
    size_t n = 0;
    if (*p == '"') {
        out[n++] = *p++;
        while (*p && *p != '"' && n + 2 < cap) out[n++] = *p++;
        if (*p != '"') return 0;
        out[n++] = '"';
    } else {
        while (*p && *p != ',' && *p != '}' && *p != ' ' && n + 1 < cap) out[n++] = *p++;
    }
    out[n] = '\0';
    return n > 0;
}

int main(void) {
    char *line = NULL;
    size_t cap = 0;
    char id[64], method[128];
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    while (getline(&line, &cap, stdin) > 0) {
        if (!member(line, "\"id\"", id, sizeof id)) continue;
        if (!member(line, "\"method\"", method, sizeof method)) continue;
        int stop = 0;
        if (strcmp(method, "\"pipevisor/handshake\"") == 0) {
            printf("{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":%s}\n", id, HANDSHAKE);
        } else if (strcmp(method, "\"pipevisor/ping\"") == 0) {
            printf("{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{}}\n", id);
        } else if (strcmp(method, "\"pipevisor/shutdown\"") == 0) {
            printf("{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":null}\n", id);
            stop = 1;
        } else if (strcmp(method, "\"echo\"") == 0) {
            printf("{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{\"ok\":true}}\n", id);
        } else {
            printf("{\"jsonrpc\":\"2.0\",\"id\":%s,\"error\":{\"code\":-32601,"
                   "\"message\":\"method not found\"}}\n", id);
        }
        fflush(stdout);
        if (stop) break;
    }
    free(line);
    return 0;
}
