/*
 * pipevisor-c-echo: a pipevisor plugin in C, with cJSON for the JSON.
 *
 * Methods: echo {text} -> {text}; add {a, b} -> a + b.
 * Requests are handled one at a time: both methods are instant, so pings get a prompt
 * answer. Numbers in comments are sections of protocol/SPEC.md.
 */
#define _POSIX_C_SOURCE 200809L /* ssize_t, read */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NAME "pipevisor-c-echo"
#define SUPPORTED_MIN "1.0" /* the protocol versions this plugin speaks */
#define SUPPORTED_MAX "1.0"

enum { PARSE_ERROR = -32700, INVALID_REQUEST = -32600, METHOD_NOT_FOUND = -32601,
       INVALID_PARAMS = -32602, UNSUPPORTED_PROTOCOL_VERSION = -31050,
       NOT_INITIALIZED = -31051 };

static bool ready = false;
static size_t max_line_bytes = 16777216; /* 3.3: the default until the handshake says */

/* 2.4: the log goes to stderr */
#define LOG(...) (fprintf(stderr, NAME ": " __VA_ARGS__), fputc('\n', stderr))

/* Writes one message as one line (takes ownership of msg). stdout is fully buffered when it
 * is a pipe, so flush after every line (2.3); a failed write means the host is gone (9.1). */
static void send_message(cJSON *msg)
{
    char *line = cJSON_PrintUnformatted(msg); /* compact: no raw newline inside (3.1) */
    cJSON_Delete(msg);
    if (line == NULL) {
        LOG("out of memory encoding an answer");
        exit(1);
    }
    bool ok = fputs(line, stdout) != EOF && fputc('\n', stdout) != EOF && fflush(stdout) == 0;
    free(line);
    if (!ok) {
        LOG("stdout closed: the host is gone");
        exit(0);
    }
}

/* A response shell echoing the request's id exactly (4.3); a NULL id becomes null. */
static cJSON *response(const cJSON *id)
{
    cJSON *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "jsonrpc", "2.0");
    cJSON_AddItemToObject(msg, "id", id ? cJSON_Duplicate(id, true) : cJSON_CreateNull());
    return msg;
}

static void answer(const cJSON *id, cJSON *result)
{
    cJSON *msg = response(id);
    cJSON_AddItemToObject(msg, "result", result);
    send_message(msg);
}

static void refuse_with(const cJSON *id, int code, const char *message, cJSON *data)
{
    cJSON *msg = response(id);
    cJSON *error = cJSON_AddObjectToObject(msg, "error");
    cJSON_AddNumberToObject(error, "code", code);
    cJSON_AddStringToObject(error, "message", message);
    if (data)
        cJSON_AddItemToObject(error, "data", data);
    send_message(msg);
}

static void refuse(const cJSON *id, int code, const char *message)
{
    refuse_with(id, code, message, NULL);
}

/* Reads MAJOR.MINOR (each 0 or 1-6 digits without a leading zero, schemas/defs.json) into
 * v[0], v[1]; versions are compared as pairs of integers, never as strings (6.4). */
static bool parse_version(const char *s, long v[2])
{
    for (int part = 0; part < 2; part++) {
        if (s == NULL || !isdigit((unsigned char)*s))
            return false;
        const char *start = s;
        v[part] = 0;
        while (isdigit((unsigned char)*s))
            v[part] = v[part] * 10 + (*s++ - '0');
        if ((s - start > 1 && *start == '0') || s - start > 6)
            return false;
        if (*s++ != (part == 0 ? '.' : '\0'))
            return false;
    }
    return true;
}

static int compare(const long a[2], const long b[2])
{
    return a[0] != b[0] ? (a[0] < b[0] ? -1 : 1) : (a[1] < b[1] ? -1 : a[1] > b[1]);
}

static cJSON *version_range(const char *min, const char *max)
{
    cJSON *range = cJSON_CreateObject();
    cJSON_AddStringToObject(range, "min", min);
    cJSON_AddStringToObject(range, "max", max);
    return range;
}

static void handshake(const cJSON *id, const cJSON *params)
{
    const cJSON *offer = cJSON_GetObjectItemCaseSensitive(params, "protocolVersions");
    const char *protocol =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(params, "protocol"));
    const cJSON *offer_min = cJSON_GetObjectItemCaseSensitive(offer, "min");
    const cJSON *offer_max = cJSON_GetObjectItemCaseSensitive(offer, "max");
    long omin[2], omax[2], low[2], high[2];
    if (!cJSON_IsObject(params) || protocol == NULL || strcmp(protocol, "pipevisor") != 0 ||
        !parse_version(cJSON_GetStringValue(offer_min), omin) ||
        !parse_version(cJSON_GetStringValue(offer_max), omax)) {
        refuse(id, INVALID_PARAMS,
               "Invalid params: expected protocol \"pipevisor\" and protocolVersions {min, max}");
        return;
    }
    parse_version(SUPPORTED_MIN, low);
    parse_version(SUPPORTED_MAX, high);
    if (compare(omin, low) > 0)
        memcpy(low, omin, sizeof low);
    if (compare(omax, high) < 0)
        memcpy(high, omax, sizeof high);
    if (compare(low, high) > 0) { /* no version lies in both ranges */
        char message[200];
        snprintf(message, sizeof message,
                 "no common protocol version: supported %s..%s, requested %s..%s",
                 SUPPORTED_MIN, SUPPORTED_MAX, offer_min->valuestring, offer_max->valuestring);
        cJSON *data = cJSON_CreateObject();
        cJSON_AddItemToObject(data, "supported", version_range(SUPPORTED_MIN, SUPPORTED_MAX));
        cJSON_AddItemToObject(data, "requested",
                              version_range(offer_min->valuestring, offer_max->valuestring));
        refuse_with(id, UNSUPPORTED_PROTOCOL_VERSION, message, data);
        return;
    }
    const cJSON *limit = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(params, "limits"), "maxLineBytes");
    if (cJSON_IsNumber(limit) && limit->valuedouble >= 1)
        max_line_bytes = (size_t)limit->valuedouble;

    char chosen[32]; /* the highest version in both ranges */
    snprintf(chosen, sizeof chosen, "%ld.%ld", high[0], high[1]);
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "protocolVersion", chosen);
    cJSON *plugin = cJSON_AddObjectToObject(result, "plugin");
    cJSON_AddStringToObject(plugin, "name", NAME);
    cJSON_AddStringToObject(plugin, "version", "1.0.0");
    cJSON *methods = cJSON_AddObjectToObject(result, "methods");
    cJSON *echo = cJSON_AddObjectToObject(methods, "echo");
    cJSON_AddStringToObject(echo, "version", "1.0");
    cJSON_AddStringToObject(echo, "description", "Return the text you send");
    cJSON *add = cJSON_AddObjectToObject(methods, "add");
    cJSON_AddStringToObject(add, "version", "1.0");
    cJSON_AddStringToObject(add, "description", "Add two numbers");
    cJSON_AddTrueToObject(cJSON_AddObjectToObject(result, "capabilities"), "shutdown");
    answer(id, result);
    ready = true;
    LOG("handshake done");
}

static void call(const cJSON *id, const char *method, const cJSON *params)
{
    if (strcmp(method, "echo") == 0) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(params, "text");
        if (!cJSON_IsString(text)) {
            refuse(id, INVALID_PARAMS, "Invalid params: expected {\"text\": string}");
            return;
        }
        cJSON *result = cJSON_CreateObject();
        cJSON_AddStringToObject(result, "text", text->valuestring);
        answer(id, result);
    } else if (strcmp(method, "add") == 0) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(params, "a");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(params, "b");
        if (!cJSON_IsNumber(a) || !cJSON_IsNumber(b)) {
            refuse(id, INVALID_PARAMS, "Invalid params: expected {\"a\": number, \"b\": number}");
            return;
        }
        answer(id, cJSON_CreateNumber(a->valuedouble + b->valuedouble));
    } else {
        char message[300];
        snprintf(message, sizeof message, "Method not found: %.250s", method);
        refuse(id, METHOD_NOT_FOUND, message);
    }
}

/* Answers one line; returns false when the plugin must exit (after shutdown). */
static bool handle(const char *line, size_t length)
{
    cJSON *msg = cJSON_ParseWithLength(line, length);
    if (msg == NULL) {
        refuse(NULL, PARSE_ERROR, "Parse error"); /* 3.5 */
        return true;
    }
    bool keep_going = true;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(msg, "method");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(msg, "params");
    const cJSON *jsonrpc = cJSON_GetObjectItemCaseSensitive(msg, "jsonrpc");
    bool response = cJSON_HasObjectItem(msg, "result") || cJSON_HasObjectItem(msg, "error");
    bool id_ok = id == NULL || cJSON_IsString(id) || cJSON_IsNumber(id) || cJSON_IsNull(id);

    if (cJSON_IsObject(msg) && method == NULL && response) {
        /* a response: this plugin sends no requests */
    } else if (!cJSON_IsObject(msg) || !cJSON_IsString(method) || response || !id_ok ||
               !cJSON_IsString(jsonrpc) || strcmp(jsonrpc->valuestring, "2.0") != 0 ||
               (params != NULL && !cJSON_IsObject(params) && !cJSON_IsArray(params))) { /* 4.2 */
        refuse(cJSON_IsString(id) || cJSON_IsNumber(id) ? id : NULL, INVALID_REQUEST,
               "Invalid Request");
    } else if (id == NULL) {
        /* notifications (pipevisor/cancel included) need no answer */
    } else if (!ready) {
        if (strcmp(method->valuestring, "pipevisor/handshake") == 0)
            handshake(id, params);
        else
            refuse(id, NOT_INITIALIZED, "not initialized"); /* 6.1 */
    } else if (strcmp(method->valuestring, "pipevisor/handshake") == 0) {
        /* 6.1: once per process; the first handshake's version and limits stay in force */
        refuse(id, INVALID_REQUEST, "Invalid Request: the handshake happens once");
    } else if (strcmp(method->valuestring, "pipevisor/ping") == 0) {
        answer(id, cJSON_CreateObject());
    } else if (strcmp(method->valuestring, "pipevisor/shutdown") == 0) { /* 7.3 */
        answer(id, cJSON_CreateNull());
        LOG("shutdown requested: exiting with status 0");
        keep_going = false;
    } else {
        call(id, method->valuestring, params);
    }
    cJSON_Delete(msg);
    return keep_going;
}

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i]))
            return false;
    return true;
}

/* Reads the next line into *line (without its "\n", NUL-terminated) and returns its length;
 * -1 at end of input; -2 for a line longer than max_line_bytes, which is read to its end but
 * never held in memory (3.3). Input is split at the byte '\n' only (3.2), and read(2) is used
 * directly because stdio's fread would wait for a full buffer. */
static long read_line(char **line, size_t *capacity)
{
    static char in[65536];
    static size_t pos = 0, end = 0;
    size_t length = 0;
    bool too_long = false;
    for (;;) {
        if (pos == end) {
            ssize_t got = read(STDIN_FILENO, in, sizeof in);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0) { /* end of input (a read error ends it too) */
                if (too_long)
                    return -2;
                return length > 0 ? (long)length : -1; /* an unterminated last line counts */
            }
            pos = 0;
            end = (size_t)got;
        }
        char *newline = memchr(in + pos, '\n', end - pos);
        size_t n = newline ? (size_t)(newline - (in + pos)) : end - pos;
        if (!too_long && length + n > max_line_bytes) {
            too_long = true;
        } else if (!too_long) {
            if (length + n + 1 > *capacity) {
                size_t want = (length + n + 1) * 2;
                char *bigger = realloc(*line, want);
                if (bigger == NULL) {
                    LOG("out of memory reading a line of %zu bytes", length + n);
                    exit(1);
                }
                *line = bigger;
                *capacity = want;
            }
            memcpy(*line + length, in + pos, n);
            length += n;
            (*line)[length] = '\0';
        }
        pos += n + (newline != NULL);
        if (newline != NULL)
            return too_long ? -2 : (long)length;
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* a broken stdout then shows up as a failed write (9.1) */
    char *line = NULL;
    size_t capacity = 0;
    long got;
    LOG("started, waiting for the handshake");
    while ((got = read_line(&line, &capacity)) != -1) {
        if (got == -2) {
            LOG("skipped a line longer than %zu bytes", max_line_bytes);
            refuse(NULL, PARSE_ERROR, "Parse error: line too long");
            continue;
        }
        size_t n = (size_t)got;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        if (blank(line, n))
            continue;
        if (!handle(line, n)) {
            free(line);
            return 0;
        }
    }
    free(line);
    LOG("stdin closed: exiting with status 0"); /* 9.1 */
    return 0;
}
