/* qvisor boot's reports: JUnit XML (--junit FILE), TAP on stdout (--tap) and one JSON
 * summary object (--json). One test case per --expect and per --exec; a failed one
 * carries the console's tail. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/cli/boot.h"

static const char *result_word(int result)
{
    return result == 0 ? "passed" : result == 5 ? "timeout" : result >= 128 ? "interrupted" : "failed";
}

/* XML text: markup escaped, control characters (not allowed in XML 1.0) as '?'. */
static void xml_text(struct buf *out, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        switch (ch) {
        case '<': buf_printf(out, "&lt;"); break;
        case '>': buf_printf(out, "&gt;"); break;
        case '&': buf_printf(out, "&amp;"); break;
        case '"': buf_printf(out, "&quot;"); break;
        case '\n':
        case '\t': buf_add(out, (const char *)&s[i], 1); break;
        case '\r': break;
        default:
            if (ch < 0x20 || ch == 0x7f)
                buf_add(out, "?", 1);
            else
                buf_add(out, (const char *)&s[i], 1);
        }
    }
}

static void xml_str(struct buf *out, const char *s)
{
    xml_text(out, s, strlen(s));
}

static size_t failures(const struct boot_outcome *o)
{
    size_t n = 0;
    for (size_t i = 0; i < o->nchecks; i++)
        n += !o->checks[i].passed;
    return n;
}

static int write_junit(const char *path, const struct boot_outcome *o, struct qv_err *e)
{
    struct buf x = {0};
    /* no checks at all: the run itself is the one test case */
    size_t ncases = o->nchecks ? o->nchecks : 1;
    size_t nfail = o->nchecks ? failures(o) : o->result != 0;
    buf_printf(&x, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    buf_printf(&x, "<testsuites tests=\"%zu\" failures=\"%zu\" time=\"%.3f\">\n", ncases, nfail,
               (double)o->total_ms / 1000);
    buf_printf(&x, "  <testsuite name=\"qvisor boot ");
    xml_str(&x, o->name);
    buf_printf(&x, "\" tests=\"%zu\" failures=\"%zu\" errors=\"0\" time=\"%.3f\">\n", ncases, nfail,
               (double)o->total_ms / 1000);
    buf_printf(&x, "    <properties>\n");
    buf_printf(&x, "      <property name=\"result\" value=\"%s\"/>\n", result_word(o->result));
    buf_printf(&x, "      <property name=\"exit_code\" value=\"%d\"/>\n", o->result);
    buf_printf(&x, "      <property name=\"first_console_line_s\" value=\"%.3f\"/>\n", (double)o->first_line_ms / 1000);
    buf_printf(&x, "      <property name=\"running_s\" value=\"%.3f\"/>\n", (double)o->ready_ms / 1000);
    buf_printf(&x, "    </properties>\n");
    uint64_t prev = 0;
    for (size_t i = 0; i < ncases; i++) {
        const struct check *k = o->nchecks ? &o->checks[i] : NULL;
        uint64_t at = k ? k->at_ms : o->total_ms;
        buf_printf(&x, "    <testcase classname=\"qvisor.boot\" name=\"");
        if (k) {
            buf_printf(&x, "%s ", k->kind);
            xml_str(&x, k->text);
        } else {
            buf_printf(&x, "boot");
        }
        buf_printf(&x, "\" time=\"%.3f\"", (double)(at > prev ? at - prev : 0) / 1000);
        prev = at > prev ? at : prev;
        bool passed = k ? k->passed : o->result == 0;
        if (passed) {
            buf_printf(&x, "/>\n");
            continue;
        }
        buf_printf(&x, ">\n      <failure message=\"");
        xml_str(&x, k && k->why[0] ? k->why : o->reason);
        buf_printf(&x, "\" type=\"%s\">", result_word(o->result));
        xml_text(&x, o->tail, o->tail_len);
        buf_printf(&x, "</failure>\n    </testcase>\n");
    }
    buf_printf(&x, "  </testsuite>\n</testsuites>\n");
    int r = write_file_atomic(path, x.p, x.len, 0644, e);
    buf_free(&x);
    return r;
}

static void print_tap(const struct boot_outcome *o)
{
    size_t n = o->nchecks ? o->nchecks : 1;
    printf("TAP version 13\n1..%zu\n", n);
    for (size_t i = 0; i < n; i++) {
        const struct check *k = o->nchecks ? &o->checks[i] : NULL;
        bool passed = k ? k->passed : o->result == 0;
        printf("%s %zu - ", passed ? "ok" : "not ok", i + 1);
        if (k) {
            printf("%s ", k->kind);
            for (const char *p = k->text; *p; p++)
                putchar(*p == '\n' ? ' ' : *p == '#' ? '_' : *p);
        } else {
            printf("boot %s", o->name);
        }
        if (!passed)
            printf(" # %s", k && k->why[0] ? k->why : o->reason);
        putchar('\n');
    }
    fflush(stdout);
}

static void print_json(const struct boot_outcome *o)
{
    json_object *j = json_object_new_object();
    json_object_object_add(j, "name", json_object_new_string(o->name));
    json_object_object_add(j, "result", json_object_new_string(result_word(o->result)));
    json_object_object_add(j, "exit_code", json_object_new_int(o->result));
    json_object_object_add(j, "reason", json_object_new_string(o->reason));
    json_object_object_add(j, "time_s", json_object_new_double((double)o->total_ms / 1000));
    json_object_object_add(j, "running_s", o->ready_ms ? json_object_new_double((double)o->ready_ms / 1000) : NULL);
    json_object_object_add(j, "first_console_line_s",
                           o->first_line_ms ? json_object_new_double((double)o->first_line_ms / 1000) : NULL);
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < o->nchecks; i++) {
        const struct check *k = &o->checks[i];
        json_object *c = json_object_new_object();
        json_object_object_add(c, "kind", json_object_new_string(k->kind));
        json_object_object_add(c, k->kind[0] == 'e' && k->kind[1] == 'x' && k->kind[2] == 'p' ? "pattern" : "command",
                               json_object_new_string(k->text));
        json_object_object_add(c, "passed", json_object_new_boolean(k->passed));
        json_object_object_add(c, "at_s", k->done ? json_object_new_double((double)k->at_ms / 1000) : NULL);
        if (!k->passed && k->why[0])
            json_object_object_add(c, "why", json_object_new_string(k->why));
        json_object_array_add(a, c);
    }
    json_object_object_add(j, "checks", a);
    const char *txt = json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    printf("%s\n", txt);
    fflush(stdout);
    json_object_put(j);
}

void boot_reports(struct cli *c, const struct boot_outcome *o)
{
    const char *junit = cli_opt(c, "junit");
    struct qv_err e = {0};
    if (junit && write_junit(junit, o, &e) < 0)
        fprintf(stderr, "qvisor: %s: --junit: %s\n", o->name, e.msg);
    if (cli_flag(c, "tap"))
        print_tap(o);
    if (c->json)
        print_json(o);
}
