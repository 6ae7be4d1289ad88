/* Saved states (qvisor save, managedsave): a file that starts with a header of our
 * own — one line "QVISOR-SAVE 1 OFFSET\n", then JSON that records the definition the
 * guest was saved with, zero-padded up to OFFSET (a multiple of 4 KiB) — followed by
 * QEMU's migration stream, which QEMU writes to and reads from an fd the supervisor
 * opened. A restore compares the recorded definition with the one in force now: the
 * guest's devices and memory must be what its saved state expects. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/model/model.h"

#define SAVE_MAGIC "QVISOR-SAVE 1 "
#define SAVE_ALIGN 4096
#define SAVE_HEADER_MAX (1u << 20)

int managedsave_path(const struct qv_paths *p, const char *name, char *out, size_t outlen)
{
    return qv_path(p, out, outlen, QV_LIB "/save/%s.state", name);
}

bool managedsave_exists(const struct qv_paths *p, const char *name)
{
    char path[PATH_MAX];
    struct stat st;
    return managedsave_path(p, name, path, sizeof(path)) == 0 && stat(path, &st) == 0;
}

/* var/lib/qvisor/save/NAME.resume: shutdown-all --save saved it; autostart --run resumes it */
static int resume_mark_path(const struct qv_paths *p, const char *name, char *out, size_t outlen)
{
    return qv_path(p, out, outlen, QV_LIB "/save/%s.resume", name);
}

int managedsave_mark_resume(const struct qv_paths *p, const char *name, bool on)
{
    char path[PATH_MAX];
    int r = resume_mark_path(p, name, path, sizeof(path));
    if (r < 0)
        return r;
    if (!on)
        return unlink(path) == 0 || errno == ENOENT ? 0 : -errno;
    return write_file_atomic(path, "", 0, 0600, NULL);
}

bool managedsave_resume_marked(const struct qv_paths *p, const char *name)
{
    char path[PATH_MAX];
    return resume_mark_path(p, name, path, sizeof(path)) == 0 && access(path, F_OK) == 0;
}

int savefile_write_header(int fd, const struct vm_def *d, const char *state, const char *qemu_version,
                          const struct savefile_live *live, struct qv_err *e)
{
    json_object *h = json_object_new_object();
    json_object_object_add(h, "name", json_object_new_string(d->name));
    json_object_object_add(h, "state", json_object_new_string(state));
    if (live->vcpus > d->cpu.count)
        json_object_object_add(h, "vcpus", json_object_new_int(live->vcpus));
    if (live->balloon_target)
        json_object_object_add(h, "balloon_target", json_object_new_int64((int64_t)live->balloon_target));
    json_object_object_add(h, "qemu_version", json_object_new_string(qemu_version ? qemu_version : ""));
    json_object_object_add(h, "saved_at_ms", json_object_new_int64((int64_t)realtime_ms()));
    json_object_object_add(h, "definition", vm_def_to_json(d));
    size_t len;
    const char *txt = json_object_to_json_string_length(h, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                        &len);
    char first[64];
    size_t need = sizeof(SAVE_MAGIC) + 16 + len + 1;
    size_t off = (need + SAVE_ALIGN - 1) / SAVE_ALIGN * SAVE_ALIGN;
    int n = snprintf(first, sizeof(first), SAVE_MAGIC "%zu\n", off);
    char *buf = qv_xcalloc(1, off);
    memcpy(buf, first, (size_t)n);
    memcpy(buf + n, txt, len);
    buf[n + len] = '\n';
    json_object_put(h);
    int r = 0;
    if (lseek(fd, 0, SEEK_SET) < 0 || write_all(fd, buf, off) < 0)
        r = qv_failerr(e, -errno, "writing the saved state's header");
    free(buf);
    return r;
}

int savefile_read_header(const char *path, int fd, json_object **header, off_t *data_off, struct qv_err *e)
{
    *header = NULL;
    char first[64] = {0};
    ssize_t n = pread(fd, first, sizeof(first) - 1, 0);
    if (n < 0)
        return qv_failerr(e, -errno, "%s", path);
    char *end;
    unsigned long long off = 0;
    char *nl = memchr(first, '\n', (size_t)n);
    if (strncmp(first, SAVE_MAGIC, sizeof(SAVE_MAGIC) - 1) == 0 && nl)
        off = strtoull(first + sizeof(SAVE_MAGIC) - 1, &end, 10);
    if (!nl || off == 0 || off > SAVE_HEADER_MAX || off % SAVE_ALIGN || end != nl)
        return qv_fail(e, -EINVAL, "%s: not a qvisor saved state (made by qvisor save or managedsave)", path);
    size_t hlen = (size_t)off - (size_t)(nl + 1 - first);
    char *buf = qv_xmalloc(hlen + 1);
    ssize_t got = pread(fd, buf, hlen, nl + 1 - first);
    if (got != (ssize_t)hlen) {
        free(buf);
        return qv_fail(e, -EINVAL, "%s: the saved state is truncated", path);
    }
    buf[hlen] = '\0';
    int r = json_parse_str(path, buf, header, e);   /* stops at the padding's first NUL */
    free(buf);
    if (r < 0)
        return r;
    json_object *def;
    if (!json_object_object_get_ex(*header, "definition", &def) || !json_object_is_type(def, json_type_object)) {
        json_object_put(*header);
        *header = NULL;
        return qv_fail(e, -EINVAL, "%s: the saved state records no definition", path);
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size <= (off_t)off) {
        json_object_put(*header);
        *header = NULL;
        return qv_fail(e, -EINVAL, "%s: the saved state holds no guest state (an interrupted save?)", path);
    }
    *data_off = (off_t)off;
    return 0;
}

int savefile_open(const char *path, json_object **header, struct vm_def *saved, off_t *data_off, int *out,
                  struct qv_err *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qv_failerr(e, -errno, "%s", path);
    int r = savefile_read_header(path, fd, header, data_off, e);
    json_object *def = NULL;
    if (r == 0) {
        json_object_object_get_ex(*header, "definition", &def);
        memset(saved, 0, sizeof(*saved));
        if ((r = vm_def_from_json(def, saved, e)) < 0) {
            qv_prefix(e, "%s: the definition it records: ", path);
            json_object_put(*header);
            *header = NULL;
        }
    }
    if (r < 0) {
        close(fd);
        return r;
    }
    *out = fd;
    return 0;
}

/* What a restored guest does not see, or the host decides anew: left out of the comparison. */
static const char *const host_side_keys[] = {"description", "on_poweroff", "on_reboot", "on_crash", "autostart",
                                             "limits", "confinement", "credentials", "cloud_init", "accel", NULL};

static bool ignored(const char *key)
{
    for (size_t i = 0; host_side_keys[i]; i++)
        if (strcmp(host_side_keys[i], key) == 0)
            return true;
    return false;
}

static const char *show(json_object *v)
{
    return v ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE) : "nothing";
}

/* The first place a and b differ, as "memory: saved 128M, now 256M"; false if equal. */
static bool json_diff(json_object *a, json_object *b, const char *path, bool top, char *out, size_t outlen)
{
    if (json_object_get_type(a) != json_object_get_type(b)) {
        snprintf(out, outlen, "%s: saved %s, now %s", path, show(a), show(b));
        return true;
    }
    if (json_object_is_type(a, json_type_object)) {
        /* keys of either side, a's first */
        for (int pass = 0; pass < 2; pass++) {
            json_object_object_foreach(pass ? b : a, k, v) {
                (void)v;
                if (top && ignored(k))
                    continue;
                json_object *va = NULL, *vb = NULL;
                json_object_object_get_ex(a, k, &va);
                json_object_object_get_ex(b, k, &vb);
                if (pass && va)
                    continue;
                char sub[512];
                snprintf(sub, sizeof(sub), "%s%s%s", path, *path ? "." : "", k);
                if (!va || !vb) {
                    snprintf(out, outlen, "%s: saved %s, now %s", sub, show(va), show(vb));
                    return true;
                }
                if (json_diff(va, vb, sub, false, out, outlen))
                    return true;
            }
        }
        return false;
    }
    if (json_object_is_type(a, json_type_array)) {
        size_t na = json_object_array_length(a), nb = json_object_array_length(b);
        if (na != nb) {
            snprintf(out, outlen, "%s: saved with %zu, now %zu", path, na, nb);
            return true;
        }
        for (size_t i = 0; i < na; i++) {
            char sub[512];
            snprintf(sub, sizeof(sub), "%s[%zu]", path, i);
            if (json_diff(json_object_array_get_idx(a, i), json_object_array_get_idx(b, i), sub, false, out, outlen))
                return true;
        }
        return false;
    }
    if (strcmp(show(a), show(b)) != 0) {
        snprintf(out, outlen, "%s: saved %s, now %s", path, show(a), show(b));
        return true;
    }
    return false;
}

int savefile_check_definition(const char *file, const struct vm_def *saved, const struct vm_def *now,
                              struct qv_err *e)
{
    _cleanup_json_ json_object *a = vm_def_to_json(saved);
    _cleanup_json_ json_object *b = vm_def_to_json(now);
    char diff[700];
    if (!json_diff(a, b, "", true, diff, sizeof(diff)))
        return 0;
    return qv_fail(e, -EINVAL, "%s: the saved state in %s does not fit the definition any more (%s); put the "
                   "definition back as it was (qvisor edit %s), or remove the saved state",
                   now->name, file, diff, now->name);
}

uint64_t savefile_balloon_target(json_object *header)
{
    json_object *v;
    if (!json_object_object_get_ex(header, "balloon_target", &v) || !json_object_is_type(v, json_type_int))
        return 0;
    int64_t b = json_object_get_int64(v);
    return b > 0 ? (uint64_t)b : 0;
}

int savefile_vcpus(const char *file, json_object *header, const struct vm_def *now, int *vcpus, struct qv_err *e)
{
    json_object *v;
    *vcpus = now->cpu.count;
    if (!json_object_object_get_ex(header, "vcpus", &v))
        return 0;
    int n = json_object_get_int(v), max = now->cpu.max ? now->cpu.max : now->cpu.count;
    if (!json_object_is_type(v, json_type_int) || n < now->cpu.count || n > max)
        return qv_fail(e, -EINVAL, "%s: the saved state in %s runs %s vCPUs (plugged with setvcpus), and its "
                       "definition allows %d to %d now (cpu.count, cpu.max): set cpu.max to at least that again",
                       now->name, file, json_object_get_string(v), now->cpu.count, max);
    *vcpus = n;
    return 0;
}
