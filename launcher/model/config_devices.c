/* Devices of a VM definition that are one switch each, as libvirt's <rng>,
 * <watchdog>, <clock offset> and <video>/<input type="tablet"> are:
 *   "rng": true
 *   "watchdog": {"model": "i6300esb", "action": "reset"}
 *   "clock": {"offset": "utc" | "localtime", "adjustment": SECONDS}
 *   "graphics": {"type": "vnc", "video": "vga" | "virtio" | "qxl" | "bochs", "tablet": true}
 * Each is off (or utc, or vga) unless given. */
#include <string.h>

#include "launcher/model/config.h"

const char *const video_names[] = {"vga", "virtio", "qxl", "bochs", NULL};
const char *const watchdog_action_names[] = {"reset", "poweroff", "shutdown", "pause", "inject-nmi", "none", NULL};
const char *const clock_offset_names[] = {"utc", "localtime", NULL};
static const char *const watchdog_models[] = {"i6300esb", NULL};
#define CLOCK_ADJUST_MAX (100ll * 366 * 86400)    /* a century either way */

static int parse_watchdog(struct jr *r, json_object *root, struct vm_def *d)
{
    json_object *o = NULL;
    int e = jr_object(r, root, "watchdog", false, &o);
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "watchdog");
    static const char *const keys[] = {"model", "action", NULL};
    int model = 0, action = WATCHDOG_RESET;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_enum(r, o, "model", watchdog_models, &model)) < 0 ||
        (e = jr_enum(r, o, "action", watchdog_action_names, &action)) < 0)
        return e;
    if (d->machine == MACHINE_MICROVM)
        return jr_fail(r, "the i6300esb watchdog is a PCI device, and microvm has no PCI");
    d->watchdog.on = true;
    d->watchdog.action = action;
    jr_pop(r, m);
    return 0;
}

static int parse_clock(struct jr *r, json_object *root, struct vm_def *d)
{
    json_object *o = NULL;
    int e = jr_object(r, root, "clock", false, &o);
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "clock");
    static const char *const keys[] = {"offset", "adjustment", NULL};
    int offset = CLOCK_UTC;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_enum(r, o, "offset", clock_offset_names, &offset)) < 0 ||
        (e = jr_int(r, o, "adjustment", -CLOCK_ADJUST_MAX, CLOCK_ADJUST_MAX, &d->clock_adjustment)) < 0)
        return e;
    d->clock_offset = offset;
    /* libvirt's offset "variable": the RTC starts at now + adjustment at each start */
    d->clock_adjust = json_object_object_get_ex(o, "adjustment", NULL);
    if (d->clock_adjust && offset != CLOCK_UTC)
        return jr_key(r, "adjustment"), jr_fail(r, "counts from UTC: use it with offset utc");
    jr_pop(r, m);
    return 0;
}

int vm_devices_parse(struct jr *r, json_object *root, struct vm_def *d)
{
    int e;
    if ((e = jr_bool(r, root, "rng", &d->rng)) < 0 || (e = parse_watchdog(r, root, d)) < 0 ||
        (e = parse_clock(r, root, d)) < 0)
        return e;
    if (d->rng && d->machine == MACHINE_MICROVM)
        return jr_key(r, "rng"), jr_fail(r, "virtio-rng-pci needs PCI, and microvm has none");
    return 0;
}

/* graphics.video and graphics.tablet, inside graphics (r is there); vnc only. */
int vm_video_parse(struct jr *r, json_object *graphics, struct vm_def *d)
{
    int video = VIDEO_VGA, e;
    if ((e = jr_enum(r, graphics, "video", video_names, &video)) < 0 ||
        (e = jr_bool(r, graphics, "tablet", &d->graphics.tablet)) < 0)
        return e;
    d->graphics.video = video;
    return 0;
}

void vm_devices_to_json(const struct vm_def *d, json_object *o)
{
    if (d->rng)
        json_object_object_add(o, "rng", json_object_new_boolean(true));
    if (d->watchdog.on) {
        json_object *w = json_object_new_object();
        json_object_object_add(w, "model", json_object_new_string(watchdog_models[0]));
        json_object_object_add(w, "action", json_object_new_string(watchdog_action_names[d->watchdog.action]));
        json_object_object_add(o, "watchdog", w);
    }
    if (d->clock_offset != CLOCK_UTC || d->clock_adjust) {
        json_object *c = json_object_new_object();
        json_object_object_add(c, "offset", json_object_new_string(clock_offset_names[d->clock_offset]));
        if (d->clock_adjust)
            json_object_object_add(c, "adjustment", json_object_new_int64(d->clock_adjustment));
        json_object_object_add(o, "clock", c);
    }
}
