/* The reading side of a QMP / guest-agent connection: bounded reads, strict UTF-8,
 * JSON framing with size and depth caps, the agent's 0xFF sentinel, then the
 * greeting, replies matched by id, errors and events. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "qmp/internal.h"

static int error_class_code(const char *cls)
{
    if (strcmp(cls, "CommandNotFound") == 0 || strcmp(cls, "KVMMissingCap") == 0)
        return -EOPNOTSUPP;
    if (strcmp(cls, "DeviceNotFound") == 0)
        return -ENOENT;
    if (strcmp(cls, "DeviceNotActive") == 0)
        return -ENODEV;
    return -EIO;
}

static void fail_with_qemu_error(struct qmp *q, struct qmp_cmd *c, json_object *error)
{
    json_object *cls = NULL, *desc = NULL;
    if (json_object_is_type(error, json_type_object)) {
        json_object_object_get_ex(error, "class", &cls);
        json_object_object_get_ex(error, "desc", &desc);
    }
    const char *cls_s = json_object_is_type(cls, json_type_string) ? json_object_get_string(cls)
                                                                   : "GenericError";
    const char *desc_s = json_object_is_type(desc, json_type_string) ? json_object_get_string(desc)
                                                                     : "(no description)";
    struct qv_err err = {0};
    qv_fail(&err, error_class_code(cls_s), "%s: %s", cls_s, desc_s);
    qmpi_cmd_complete(q, c, NULL, &err);
}


/* The handshake goes on in the same entry: same deadline, same callback. */
void qmpi_start_capabilities(struct qmp *q, struct qmp_cmd *c)
{
    c->kind = CMD_CAPABILITIES;
    c->id = q->next_id++;
    snprintf(c->name, sizeof(c->name), "qmp_capabilities");
    (void)qmpi_queue_output(q, qv_xasprintf("{\"execute\":\"qmp_capabilities\",\"id\":\"qv-%" PRIu64 "\"}\n", c->id),
                       NULL, 0, true);
}

static void handle_greeting(struct qmp *q, json_object *greeting)
{
    if (q->greeting_seen)
        return;
    q->greeting_seen = true;
    json_object *version, *qemu, *v;
    if (json_object_object_get_ex(greeting, "version", &version) &&
        json_object_object_get_ex(version, "qemu", &qemu) &&
        json_object_is_type(qemu, json_type_object)) {
        int *fields[] = {&q->major, &q->minor, &q->micro};
        const char *names[] = {"major", "minor", "micro"};
        for (size_t i = 0; i < ARRAY_SIZE(fields); i++)
            if (json_object_object_get_ex(qemu, names[i], &v) && json_object_is_type(v, json_type_int))
                *fields[i] = json_object_get_int(v);
        snprintf(q->version, sizeof(q->version), "%d.%d.%d", q->major, q->minor, q->micro);
    }
    struct qmp_cmd *wait = qmpi_cmd_find_kind(q, CMD_GREETING);
    if (wait)
        qmpi_start_capabilities(q, wait);
}

static void handle_event(struct qmp *q, json_object *msg, json_object *event)
{
    if (!json_object_is_type(event, json_type_string) || !q->on_event)
        return;
    json_object *data = NULL, *ts, *v;
    json_object_object_get_ex(msg, "data", &data);
    uint64_t ts_us = 0;
    if (json_object_object_get_ex(msg, "timestamp", &ts) && json_object_is_type(ts, json_type_object)) {
        int64_t sec = 0, usec = 0;
        if (json_object_object_get_ex(ts, "seconds", &v))
            sec = json_object_get_int64(v);
        if (json_object_object_get_ex(ts, "microseconds", &v))
            usec = json_object_get_int64(v);
        /* QEMU stamps -1 when it has no clock; that is "no timestamp", not 2^64-1. */
        if (sec >= 0 && usec >= 0)
            ts_us = (uint64_t)sec * 1000000u + (uint64_t)usec;
    }
    q->callback_depth++;
    q->on_event(q->ctx, json_object_get_string(event), data, ts_us);
    q->callback_depth--;
}

/* Takes ownership of msg (which may be NULL: the JSON literal null). */
static void handle_message(struct qmp *q, json_object *msg_owned)
{
    _cleanup_json_ json_object *msg = msg_owned;
    json_object *v, *id = NULL;

    if (q->after_sentinel) {
        q->after_sentinel = false;
        struct qmp_cmd *sync = qmpi_cmd_find_kind(q, CMD_SYNC);
        if (sync && json_object_is_type(msg, json_type_object) &&
            json_object_object_get_ex(msg, "return", &v) && json_object_is_type(v, json_type_int) &&
            json_object_get_int64(v) == sync->sync_id) {
            qmpi_cmd_unlink(q, sync);
            qmpi_cmd_complete(q, sync, v, NULL);
        }
        /* Anything else after a 0xFF is the echo of an older sync: stale. */
        return;
    }
    if (q->unsynced)
        return;

    if (!json_object_is_type(msg, json_type_object)) {
        qmpi_close_connection(q, "%s connection closed: %s sent a JSON %s instead of an object",
                         qmpi_proto_name(q), qmpi_peer_name(q), json_type_to_name(json_object_get_type(msg)));
        return;
    }
    if (q->proto == QMP_MONITOR && json_object_object_get_ex(msg, "QMP", &v)) {
        handle_greeting(q, v);
        return;
    }
    if (json_object_object_get_ex(msg, "event", &v)) {
        handle_event(q, msg, v);
        return;
    }
    json_object_object_get_ex(msg, "id", &id);
    if (json_object_object_get_ex(msg, "return", &v)) {
        struct qmp_cmd *c = qmpi_cmd_find_id(q, id);
        /* A guest agent that does not echo ids still answers strictly in order. A
         * monitor always echoes ours, so a return it sends without one is not for us. */
        if (!c && !id && q->proto == QMP_AGENT)
            c = qmpi_cmd_oldest_sent(q, true);
        if (!c)
            return;
        qmpi_cmd_unlink(q, c);
        qmpi_cmd_complete(q, c, v, NULL);
        return;
    }
    if (json_object_object_get_ex(msg, "error", &v)) {
        /* Without an id, QEMU is reporting input it could not parse: that was the
         * command sent first among those still waiting. */
        struct qmp_cmd *c = id ? qmpi_cmd_find_id(q, id) : qmpi_cmd_oldest_sent(q, false);
        if (!c)
            return;
        qmpi_cmd_unlink(q, c);
        fail_with_qemu_error(q, c, v);
        return;
    }
    /* Unknown message kinds are a newer protocol talking: ignore them. */
}

/* Input we cannot make sense of: fatal, except while an agent stream is being
 * resynchronised, where garbage is exactly what we expect to skip. */
static void input_error(struct qmp *q, const char *fmt, ...) QV_PRINTF(2, 3);
static void input_error(struct qmp *q, const char *fmt, ...)
{
    if (q->unsynced) {
        json_tokener_reset(q->tok);
        q->fed = 0;
        q->after_sentinel = false;
        return;
    }
    char why[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    qmpi_close_connection(q, "%s connection closed: %s", qmpi_proto_name(q), why);
}

static void too_large(struct qmp *q)
{
    input_error(q, "a message from %s is larger than %u bytes (%u MiB, the limit for one message)", qmpi_peer_name(q),
                QMP_MAX_MESSAGE, QMP_MAX_MESSAGE >> 20);
}

static void saw_sentinel(struct qmp *q)
{
    json_tokener_reset(q->tok);
    q->fed = 0;
    q->after_sentinel = true;
}


static void process_input(struct qmp *q)
{
    /* State lives in q and is re-read every round: a callback run from
     * handle_message may itself have consumed input. */
    while (!q->closed && q->in.len > 0) {
        const unsigned char *p = (const unsigned char *)q->in.p;
        size_t len = q->in.len;
        bool final = false;

        if (q->proto == QMP_AGENT) {
            const unsigned char *ff = memchr(p, 0xFF, len);
            if (q->unsynced && !q->after_sentinel) {
                buf_consume(&q->in, ff ? (size_t)(ff - p) + 1 : len);
                if (ff)
                    saw_sentinel(q);
                continue;
            }
            if (ff == p) {
                buf_consume(&q->in, 1);
                saw_sentinel(q);
                continue;
            }
            if (ff) {
                len = (size_t)(ff - p);
                final = true;
            }
        }

        size_t room = QMP_MAX_MESSAGE - q->fed;
        bool capped = len > room;
        if (capped) {
            len = room;
            final = false;
        }
        size_t ok;
        if (!utf8_prefix(p, len, final, &ok)) {
            input_error(q, "%s sent invalid UTF-8", qmpi_peer_name(q));
            continue;
        }
        if (ok == 0) {
            if (capped)
                too_large(q);
            break;  /* the rest of a character is still on its way */
        }

        json_object *obj = json_tokener_parse_ex(q->tok, (const char *)p, (int)ok);
        enum json_tokener_error jerr = json_tokener_get_error(q->tok);
        if (jerr == json_tokener_continue) {
            buf_consume(&q->in, ok);
            q->fed += ok;
            if (q->fed >= QMP_MAX_MESSAGE)
                too_large(q);
            continue;
        }
        if (jerr == json_tokener_error_depth) {
            input_error(q, "a message from %s is nested deeper than %d levels", qmpi_peer_name(q), QMP_MAX_DEPTH);
            continue;
        }
        if (jerr == json_tokener_error_parse_utf8_string) {
            input_error(q, "%s sent invalid UTF-8", qmpi_peer_name(q));
            continue;
        }
        if (jerr != json_tokener_success) {
            input_error(q, "%s sent invalid JSON (%s)", qmpi_peer_name(q), json_tokener_error_desc(jerr));
            continue;
        }
        size_t used = json_tokener_get_parse_end(q->tok);
        if (used == 0 || used > ok) {
            /* Cannot happen with json-c as we know it; never loop on it. */
            json_object_put(obj);
            input_error(q, "JSON parser made no progress on input from %s", qmpi_peer_name(q));
            continue;
        }
        buf_consume(&q->in, used);
        if (q->fed + used > BIG_MESSAGE) {
            /* json-c's tokener keeps its string buffer at the largest size it
             * ever reached: one big reply would stay in our RSS for good */
            json_tokener_free(q->tok);
            q->tok = qmpi_tokener_new();
        }
        q->fed = 0;
        handle_message(q, obj);
    }
}


json_tokener *qmpi_tokener_new(void)
{
    json_tokener *tok = json_tokener_new_ex(QMP_MAX_DEPTH);
    if (!tok)
        abort();    /* out of memory, as in qv_xmalloc */
    /* ALLOW_TRAILING_CHARS: without it STRICT refuses a second message in the
     * same buffer, and QEMU routinely sends several at once. */
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS | JSON_TOKENER_VALIDATE_UTF8);
    return tok;
}

void qmpi_read_input(struct qmp *q)
{
    size_t budget = READ_BUDGET;
    while (!q->closed && budget > 0) {
        ssize_t n = recv(q->fd, q->rbuf, READ_CHUNK < budget ? READ_CHUNK : budget, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                qmpi_close_connection(q, "%s connection closed: receiving from %s: %s", qmpi_proto_name(q),
                                 qmpi_peer_name(q), strerror(errno));
            return;
        }
        if (n == 0) {
            qmpi_close_connection(q, "%s connection closed by %s", qmpi_proto_name(q), qmpi_peer_name(q));
            return;
        }
        budget -= (size_t)n;
        buf_add(&q->in, q->rbuf, (size_t)n);
        process_input(q);
    }
}
