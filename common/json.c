#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

#define JSON_FILE_MAX (4u << 20)

static void offset_to_line_col(const char *text, size_t off, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off && text[i]; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

/* A \u0000 escape in an object key: json-c keeps keys as C strings, so
 * {"name\u0000x": 1} would silently become {"name": 1}. Values keep their NUL and are
 * refused with their JSON path by jr_check_text; keys can only be caught here.
 * `text` was accepted by json-c, which also takes comments and single quotes. Returns
 * the offset of the key's opening quote, or -1. */
static ssize_t key_with_nul(const char *text, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (text[i] == '/' && i + 1 < n && (text[i + 1] == '*' || text[i + 1] == '/')) {
            const char *end = text[i + 1] == '*' ? "*/" : "\n";
            const char *c = memmem(text + i + 2, n - i - 2, end, strlen(end));
            if (!c)
                return -1;
            i = (size_t)(c - text) + strlen(end) - 1;
            continue;
        }
        if (text[i] != '"' && text[i] != '\'')
            continue;
        char quote = text[i];
        size_t start = i;
        bool nul = false;
        for (i++; i < n && text[i] != quote; i++) {
            if (text[i] != '\\')
                continue;
            if (i + 5 < n && text[i + 1] == 'u' && memcmp(text + i + 2, "0000", 4) == 0)
                nul = true;
            i++;    /* the escaped character: never a closing quote */
        }
        size_t j = i + 1;
        while (j < n && strchr(" \t\r\n", text[j]))
            j++;
        if (nul && j < n && text[j] == ':')
            return (ssize_t)start;
    }
    return -1;
}

int json_parse_buf(const char *what, const char *text, size_t n, json_object **out, struct qv_err *e)
{
    int line, col;
    /* json-c stops at a NUL byte and would ignore whatever follows it */
    const char *nul = memchr(text, '\0', n);
    if (nul) {
        offset_to_line_col(text, (size_t)(nul - text), &line, &col);
        return qv_fail(e, -EINVAL, "%s:%d:%d: a NUL byte (JSON is text; write \\u0000 inside a string if you must)",
                       what, line, col);
    }
    if (n > INT32_MAX)
        return qv_fail(e, -EINVAL, "%s: too large", what);
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return qv_fail(e, -ENOMEM, "%s: out of memory", what);
    json_object *o = json_tokener_parse_ex(tok, text, (int)n);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t off = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (jerr == json_tokener_continue) {
        offset_to_line_col(text, n, &line, &col);
        return qv_fail(e, -EINVAL, "%s:%d:%d: unexpected end of JSON", what, line, col);
    }
    if (jerr != json_tokener_success) {
        offset_to_line_col(text, off, &line, &col);
        return qv_fail(e, -EINVAL, "%s:%d:%d: %s", what, line, col, json_tokener_error_desc(jerr));
    }
    for (size_t i = off; i < n; i++) {
        if (!strchr(" \t\r\n", text[i])) {
            json_object_put(o);
            offset_to_line_col(text, i, &line, &col);
            return qv_fail(e, -EINVAL, "%s:%d:%d: trailing data after the JSON value", what, line, col);
        }
    }
    ssize_t k = key_with_nul(text, off);
    if (k >= 0) {
        json_object_put(o);
        offset_to_line_col(text, (size_t)k, &line, &col);
        return qv_fail(e, -EINVAL, "%s:%d:%d: an object key contains \\u0000 (NUL)", what, line, col);
    }
    *out = o;
    return 0;
}

int json_parse_str(const char *what, const char *text, json_object **out, struct qv_err *e)
{
    return json_parse_buf(what, text, strlen(text), out, e);
}

int json_read_file(const char *path, json_object **out, struct qv_err *e)
{
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    int r = read_file(path, JSON_FILE_MAX, &text, &len);
    if (r == -EFBIG)
        return qv_fail(e, -EINVAL, "%s: larger than %u bytes", path, JSON_FILE_MAX);
    if (r < 0)
        return qv_failerr(e, r, "%s", path);
    return json_parse_buf(path, text, len, out, e);
}

char *json_pretty(json_object *o)
{
    const char *s = json_object_to_json_string_ext(
        o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);
    return qv_xasprintf("%s\n", s);
}

int json_write_file_atomic(const char *path, json_object *o, mode_t mode, struct qv_err *e)
{
    _cleanup_free_ char *s = json_pretty(o);
    return write_file_atomic(path, s, strlen(s), mode, e);
}

/* ---- schema reading with paths ---- */

void jr_init(struct jr *r, struct qv_err *e)
{
    r->err = e;
    r->path[0] = '\0';
    r->len = 0;
}

size_t jr_key(struct jr *r, const char *key)
{
    size_t mark = r->len;
    int n = snprintf(r->path + r->len, sizeof(r->path) - r->len, "%s%s", r->len ? "." : "", key);
    if (n > 0)
        r->len = r->len + (size_t)n < sizeof(r->path) ? r->len + (size_t)n : sizeof(r->path) - 1;
    return mark;
}

size_t jr_index(struct jr *r, size_t i)
{
    size_t mark = r->len;
    int n = snprintf(r->path + r->len, sizeof(r->path) - r->len, "[%zu]", i);
    if (n > 0)
        r->len = r->len + (size_t)n < sizeof(r->path) ? r->len + (size_t)n : sizeof(r->path) - 1;
    return mark;
}

void jr_pop(struct jr *r, size_t mark)
{
    r->len = mark;
    r->path[mark] = '\0';
}

int jr_fail(struct jr *r, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (r->len)
        return qv_fail(r->err, -EINVAL, "%s: %s", r->path, msg);
    return qv_fail(r->err, -EINVAL, "%s", msg);
}

const char *jr_show(json_object *v)
{
    return json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
}

static const char *type_name(json_type t)
{
    switch (t) {
    case json_type_null: return "null";
    case json_type_boolean: return "a boolean";
    case json_type_double: return "a number";
    case json_type_int: return "an integer";
    case json_type_object: return "an object";
    case json_type_array: return "an array";
    case json_type_string: return "a string";
    }
    return "a value";
}

int jr_expect(struct jr *r, json_object *v, json_type type)
{
    json_type t = json_object_get_type(v);
    if (t == type)
        return 0;
    return jr_fail(r, "%s is %s, expected %s", jr_show(v), type_name(t), type_name(type));
}

int jr_only_keys(struct jr *r, json_object *obj, const char *const *allowed)
{
    json_object_object_foreach(obj, key, val) {
        (void)val;
        if (strv_contains(allowed, key))
            continue;
        _cleanup_free_ char *list = strv_join(allowed, ", ");
        return jr_fail(r, "unknown key \"%s\" (allowed: %s)", key, list);
    }
    return 0;
}

static int get(struct jr *r, json_object *obj, const char *key, bool required, json_type type,
               json_object **out)
{
    json_object *v;
    if (!json_object_object_get_ex(obj, key, &v)) {
        if (required) {
            size_t m = jr_key(r, key);
            int e = jr_fail(r, "missing");
            jr_pop(r, m);
            return e;
        }
        *out = NULL;
        return 0;
    }
    size_t m = jr_key(r, key);
    int e = jr_expect(r, v, type);
    jr_pop(r, m);
    if (e < 0)
        return e;
    *out = v;
    return 0;
}

int jr_object(struct jr *r, json_object *obj, const char *key, bool required, json_object **out)
{
    json_object *v;
    int e = get(r, obj, key, required, json_type_object, &v);
    if (e == 0 && v)
        *out = v;
    return e;
}

int jr_array(struct jr *r, json_object *obj, const char *key, json_object **out)
{
    json_object *v;
    int e = get(r, obj, key, false, json_type_array, &v);
    if (e == 0 && v)
        *out = v;
    return e;
}

int jr_string(struct jr *r, json_object *obj, const char *key, bool required, char **out)
{
    json_object *v;
    int e = get(r, obj, key, required, json_type_string, &v);
    if (e == 0 && v) {
        free(*out);
        *out = qv_xstrdup(json_object_get_string(v));
    }
    return e;
}

int jr_bool(struct jr *r, json_object *obj, const char *key, bool *out)
{
    json_object *v;
    int e = get(r, obj, key, false, json_type_boolean, &v);
    if (e == 0 && v)
        *out = json_object_get_boolean(v);
    return e;
}

int jr_int(struct jr *r, json_object *obj, const char *key, int64_t min, int64_t max, int64_t *out)
{
    json_object *v;
    int e = get(r, obj, key, false, json_type_int, &v);
    if (e < 0 || !v)
        return e;
    errno = 0;
    int64_t n = json_object_get_int64(v);
    if (errno || n < min || n > max) {
        size_t m = jr_key(r, key);
        e = jr_fail(r, "%s is out of range (%" PRId64 "..%" PRId64 ")", jr_show(v), min, max);
        jr_pop(r, m);
        return e;
    }
    *out = n;
    return 0;
}

int jr_enum(struct jr *r, json_object *obj, const char *key, const char *const *names, int *out)
{
    json_object *v;
    int e = get(r, obj, key, false, json_type_string, &v);
    if (e < 0 || !v)
        return e;
    const char *s = json_object_get_string(v);
    for (int i = 0; names[i]; i++) {
        if (strcmp(names[i], s) == 0) {
            *out = i;
            return 0;
        }
    }
    _cleanup_free_ char *list = strv_join(names, ", ");
    size_t m = jr_key(r, key);
    e = jr_fail(r, "%s is not one of %s", jr_show(v), list);
    jr_pop(r, m);
    return e;
}

/* Length of the valid UTF-8 prefix of s[0..n). */
static size_t utf8_valid_prefix(const unsigned char *s, size_t n)
{
    size_t ok;
    utf8_prefix(s, n, true, &ok);
    return ok;
}

static int check_string(struct jr *r, const char *s, size_t n, json_object *shown)
{
    if (strlen(s) != n)
        return jr_fail(r, "%s contains a NUL character (\\u0000)", jr_show(shown));
    size_t ok = utf8_valid_prefix((const unsigned char *)s, n);
    if (ok != n)    /* the value itself is not shown: its bytes would garble the message */
        return jr_fail(r, "is not valid UTF-8 (byte %zu of the string is 0x%02x)", ok + 1, (unsigned char)s[ok]);
    return 0;
}

int jr_check_text(struct jr *r, json_object *v)
{
    int e = 0;
    switch (json_object_get_type(v)) {
    case json_type_string:
        return check_string(r, json_object_get_string(v), (size_t)json_object_get_string_len(v), v);
    case json_type_array:
        for (size_t i = 0; i < json_object_array_length(v) && e == 0; i++) {
            size_t m = jr_index(r, i);
            e = jr_check_text(r, json_object_array_get_idx(v, i));
            if (e == 0)
                jr_pop(r, m);
        }
        return e;
    case json_type_object: {
        json_object_object_foreach(v, key, val) {
            size_t n = strlen(key), ok = utf8_valid_prefix((const unsigned char *)key, n);
            if (ok != n)
                return jr_fail(r, "an object key is not valid UTF-8 (byte %zu of the key is 0x%02x)", ok + 1,
                               (unsigned char)key[ok]);
            size_t m = jr_key(r, key);
            if ((e = jr_check_text(r, val)) < 0)
                return e;
            jr_pop(r, m);
        }
        return 0;
    }
    default:
        return 0;
    }
}

int jr_size(struct jr *r, json_object *obj, const char *key, uint64_t min, uint64_t *out)
{
    json_object *v;
    int e = get(r, obj, key, false, json_type_string, &v);
    if (e < 0 || !v)
        return e;
    uint64_t bytes;
    size_t m = jr_key(r, key);
    if (parse_size(json_object_get_string(v), &bytes) < 0)
        e = jr_fail(r, "%s is not a size like \"512K\" or \"8M\"", jr_show(v));
    else if (bytes < min)
        e = jr_fail(r, "%s is below the minimum of %" PRIu64 " bytes", jr_show(v), min);
    else
        *out = bytes;
    jr_pop(r, m);
    return e;
}

json_object *json_obj1(const char *key, json_object *v)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, key, v);
    return o;
}
