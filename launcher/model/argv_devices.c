/* Devices that are one switch each in a definition (config_devices.c), and the display.
 * Each has a fixed PCI slot (argv_internal.h), so turning one on renames nothing. */
#include <time.h>

#include "launcher/model/argv_internal.h"

void argv_add_display(struct builder *b)
{
    const struct vm_def *d = b->d;
    if (d->graphics.kind != GRAPHICS_VNC) {
        arg2(b, "-display", "none");
        return;
    }
    char vnc[128];
    const char *l = d->graphics.listen;
    bool v6 = strchr(l, ':') != NULL;
    if (d->graphics.port < 0)
        snprintf(vnc, sizeof(vnc), "%s%s%s:0,to=99", v6 ? "[" : "", l, v6 ? "]" : "");
    else
        snprintf(vnc, sizeof(vnc), "%s%s%s:%d", v6 ? "[" : "", l, v6 ? "]" : "", d->graphics.port - 5900);
    if (d->graphics.password_secret)
        strncat(vnc, ",password=on", sizeof(vnc) - strlen(vnc) - 1);
    arg2(b, "-vnc", vnc);
    static const char *const drivers[] = {[VIDEO_VGA] = "VGA", [VIDEO_VIRTIO] = "virtio-vga", [VIDEO_QXL] = "qxl-vga",
                                          [VIDEO_BOCHS] = "bochs-display"};
    json_object *o = jobj();
    js(o, "driver", drivers[d->graphics.video]);
    js(o, "id", "video0");
    pci_place(b, o, SLOT_VGA, 0);
    arg_json(b, "-device", o);
}

const char *argv_watchdog_action(const struct vm_def *d)
{
    static const char *const actions[] = {
        [WATCHDOG_RESET] = ",watchdog=reset", [WATCHDOG_POWEROFF] = ",watchdog=poweroff",
        [WATCHDOG_SHUTDOWN] = ",watchdog=shutdown", [WATCHDOG_PAUSE] = ",watchdog=pause",
        [WATCHDOG_INJECT_NMI] = ",watchdog=inject-nmi", [WATCHDOG_NONE] = ",watchdog=none",
    };
    return d->watchdog.on ? actions[d->watchdog.action] : "";
}

void argv_add_devices(struct builder *b)
{
    const struct vm_def *d = b->d;
    if (d->rng) {
        /* rng-builtin reads getrandom(): no /dev/urandom to open inside the sandbox */
        json_object *o = jobj();
        js(o, "qom-type", "rng-builtin");
        js(o, "id", "rng0");
        arg_json(b, "-object", o);
        o = jobj();
        js(o, "driver", "virtio-rng-pci");
        js(o, "rng", "rng0");
        js(o, "id", "rng0dev");
        pci_place(b, o, SLOT_RNG, 0);
        arg_json(b, "-device", o);
    }
    if (d->watchdog.on) {
        json_object *o = jobj();
        js(o, "driver", "i6300esb");
        js(o, "id", "watchdog0");
        pci_place(b, o, SLOT_WATCHDOG, 0);
        arg_json(b, "-device", o);
    }
    if (d->memory.balloon) {
        /* no deflate-on-oom: the guest gives the pages back (MemTotal shrinks), as asked */
        json_object *o = jobj();
        js(o, "driver", "virtio-balloon-pci");
        js(o, "id", "balloon0");
        pci_place(b, o, d->machine == MACHINE_PC ? SLOT_BALLOON_PC : SLOT_BALLOON_Q35, 0);
        arg_json(b, "-device", o);
    }
    if (d->clock_offset == CLOCK_LOCALTIME || d->clock_adjust) {
        /* QEMU takes the RTC's start as a date; the guest's clock then runs from it. Local
         * time is qvisor's (host_facts_set_now), not what QEMU's emptied environment
         * and private /etc would make of base=localtime. */
        time_t t = (time_t)(b->f->now + (d->clock_offset == CLOCK_LOCALTIME ? b->f->utc_offset : d->clock_adjustment));
        struct tm tm;
        char base[48];
        gmtime_r(&t, &tm);
        strftime(base, sizeof(base), "base=%Y-%m-%dT%H:%M:%S", &tm);
        arg2(b, "-rtc", base);
    }
    if (d->graphics.kind == GRAPHICS_VNC && d->graphics.tablet) {
        json_object *o = jobj();
        js(o, "driver", "usb-tablet");
        js(o, "id", "tablet0");
        js(o, "bus", "usb0.0");
        arg_json(b, "-device", o);
    }
}
