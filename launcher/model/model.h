/* launcher/model: what a VM is, and what the host says about it — its definition and
 * validation, the store under etc/, host facts, the pure launch plan (argv, fd slots
 * and every derived value), saved states, and the run state files under run/ that
 * tell what is running without asking anyone. Networks are in netdef.h; disks
 * resolved at start, secrets, pools, volumes and snapshots in storedef.h. Nothing here starts
 * or supervises anything; the launch plan is a pure function of a definition and
 * host facts, so it is tested exhaustively without starting anything. */
#ifndef QV_MODEL_H
#define QV_MODEL_H

#include <limits.h>
#include "common/common.h"
#include "netsetup/netsetup.h"
#include "storage/storage.h"

/* ---- the VM definition ------------------------------------------------------- */
enum vm_machine { MACHINE_Q35, MACHINE_PC, MACHINE_MICROVM };
enum vm_accel { ACCEL_AUTO, ACCEL_KVM, ACCEL_TCG };
enum vm_firmware { FIRMWARE_BIOS, FIRMWARE_UEFI };
enum boot_dev { BOOT_DISK, BOOT_CDROM, BOOT_NETWORK };
enum disk_format { FORMAT_PROBE = -1, FORMAT_RAW, FORMAT_QCOW2 };
enum disk_bus { BUS_VIRTIO, BUS_SCSI, BUS_SATA, BUS_IDE, BUS_USB };
enum disk_cache { CACHE_NONE, CACHE_WRITEBACK, CACHE_WRITETHROUGH, CACHE_UNSAFE, CACHE_DIRECTSYNC };
enum disk_aio { AIO_AUTO, AIO_IO_URING, AIO_NATIVE, AIO_THREADS };
enum nic_type { NIC_USER, NIC_BRIDGE, NIC_NETWORK, NIC_DIRECT };
enum nic_model { MODEL_VIRTIO, MODEL_E1000, MODEL_RTL8139 };
enum macvtap_mode { MACVTAP_BRIDGE, MACVTAP_VEPA, MACVTAP_PRIVATE, MACVTAP_PASSTHRU };
enum console_kind { CONSOLE_SERIAL, CONSOLE_VIRTIO, CONSOLE_NONE };
enum graphics_kind { GRAPHICS_NONE, GRAPHICS_VNC };
enum video_model { VIDEO_VGA, VIDEO_VIRTIO, VIDEO_QXL, VIDEO_BOCHS };
/* QEMU's -action watchdog=: what an expired watchdog does */
enum watchdog_action { WATCHDOG_RESET, WATCHDOG_POWEROFF, WATCHDOG_SHUTDOWN, WATCHDOG_PAUSE, WATCHDOG_INJECT_NMI,
                       WATCHDOG_NONE };
enum clock_offset { CLOCK_UTC, CLOCK_LOCALTIME };
/* cpu.maxphysaddr: the guest's physical address width (libvirt's <maxphysaddr>) */
enum vm_physaddr { PHYSADDR_DEFAULT, PHYSADDR_PASSTHROUGH, PHYSADDR_EMULATE };
enum on_poweroff { POWEROFF_STOP, POWEROFF_RESTART };
enum on_reboot { REBOOT_RESTART, REBOOT_STOP };
enum on_crash { CRASH_STOP, CRASH_RESTART, CRASH_PAUSE };

extern const char *const vm_machine_names[];
extern const char *const vm_accel_names[];
extern const char *const disk_bus_names[];
extern const char *const disk_format_names[];
extern const char *const nic_type_names[];
extern const char *const nic_model_names[];

#define VM_MAX_DISKS 12      /* virtio disks get PCI slots 0x0b..0x16 */
#define VM_MAX_NICS 8        /* NICs get PCI slots 0x03..0x0a */
#define VM_HOTPLUG_PORTS 4   /* free pcie-root-ports on q35 */
#define VM_MAX_FILESYSTEMS 8 /* virtiofs shares get PCI slot 0x1b, functions 0-7 */
#define VM_FS_TAG_MAX 36     /* virtio-fs's tag field */
#define VM_HOST_CPUS_MAX 1024   /* host CPU numbers in cpu.pinning: cpu_set_t's size */
#define VM_NUMA_MAX 64          /* guest NUMA nodes */

/* A guest NUMA node (libvirt's <numa><cell>): its vCPUs and its share of the RAM,
 * each node with a memory backend of its own. */
struct vm_numa_node {
    char *cpus;             /* vCPU list as written ("0-1,4"), checked: every vCPU in exactly one node */
    uint64_t bytes;
};

struct hostfwd {
    bool udp;
    char *host;             /* listen address on the host, default 127.0.0.1 */
    int host_port;
    char *guest;            /* guest address, default: the guest's DHCP address */
    int guest_port;
};

/* A disk on an rbd volume as resolved at start (vm_resolve_disk): what QEMU's rbd
 * driver is given. The key itself stays in its secret's value file (keyfile): the
 * supervisor copies it into a sealed memfd that QEMU reads as a secret object. */
struct vm_disk_rbd {
    char *pool_name;        /* qvisor's pool */
    char *rbd_pool;         /* the Ceph pool */
    char *image;
    char *user;             /* cephx id */
    char *keyfile;          /* NULL: auth none */
    struct strv servers;    /* "IP:PORT" of each monitor: QEMU needs no ceph.conf */
    struct strv addrs;      /* every monitor and OSD address of the cluster map: all QEMU may reach */
};

struct vm_disk {
    char *file;             /* the image; for a volume disk, filled when resolved at start */
    char *volume;           /* "POOL/NAME", or NULL for a file disk */
    /* Filled at start by vm_resolve_disks, never part of the definition: the layers
     * below a qcow2 top (first: the top's backing file), each passed as an fd with
     * its node named in the blockdev graph, so QEMU opens no path. */
    struct vm_disk_layer {
        char *path;
        enum disk_format format;
        dev_t dev;          /* the file that was checked: the one opened for QEMU must be it */
        ino_t ino;
    } *backing;
    size_t nbacking;
    dev_t dev;              /* a qcow2 top's file as its chain was checked; ino 0: not checked */
    ino_t ino;
    enum disk_format format;
    enum disk_bus bus;
    enum disk_cache cache;
    enum disk_aio aio;
    bool discard, readonly, snapshot;
    char *serial;
    int boot_index;         /* -1: none */
    struct vm_disk_rbd *rbd;    /* filled at start for a volume of an rbd pool; NULL otherwise */
};

struct vm_cdrom {
    char *file;             /* NULL: empty tray */
    enum disk_bus bus;
    int boot_index;
};

enum nic_filter { FILTER_CLEAN, FILTER_NONE };

/* A NIC filter's rule: ports, an ICMP type, addresses (netsetup_port says what each means) */
struct nic_port {
    int proto;              /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6; 0: any (with an address) */
    int lo, hi;             /* inclusive; 0 for ICMP */
    bool typed;             /* ICMP/ICMPv6: icmp_type is matched; untyped ICMP: echo-request, IPv4 and IPv6 */
    int icmp_type;
    char source[52], destination[52];   /* CIDRs (named filters), normalized; "": any */
};
/* The netsetup form of a rule; it points into `p`. */
void nic_port_netsetup(const struct nic_port *p, struct netsetup_port *out);

struct vm_nic {
    enum nic_type type;
    char *source;           /* bridge, network or host interface; NULL for user */
    enum macvtap_mode mode;
    char mac[18];
    enum nic_model model;
    int queues;
    bool vhost;
    struct hostfwd *fwd;
    size_t nfwd;
    int boot_index;
    /* on managed networks: clean-traffic (own MAC and IP only) unless "none";
     * allow_in turns on inbound filtering with these ports open */
    enum nic_filter filter;
    char *filter_name;      /* a named filter (etc/qvisor/filters/NAME.json): clean-traffic plus its
                             * rules, read when the filter is applied; NULL: none or built in */
    int vlan;               /* 0: none; 1-4094: the tap is an untagged access port of that VLAN */
    struct nic_port *allow_in, *deny_out;
    size_t nallow_in, ndeny_out;
};

/* "tcp/22", "udp/5000-5010", "icmp" */
bool nic_port_parse(const char *s, struct nic_port *p);

/* Named NIC filters (filterdef.c): etc/qvisor/filters/NAME.json, {"name", "rules": [{"direction":
 * "in"|"out", "protocol": "tcp"|"udp"|"icmp"|"icmpv6"|"all", "ports": "80"|"8000-8100" (tcp, udp),
 * "type": "echo-request"|0-255 (icmp, icmpv6), "source"/"destination": "10.0.0.0/8"|"fd00::/64",
 * "action": "accept"|"drop"}]}. Clean-traffic plus: in rules accept (and make everything else
 * new inbound dropped), out rules drop. "clean-traffic" and "none" are built in (filter_load
 * gives them no rules). */
struct filter_def {
    char *name;
    struct nic_port *allow_in, *deny_out;
    size_t nallow_in, ndeny_out;
};
void filter_def_free(struct filter_def *f);
bool filter_builtin(const char *name);
int filter_def_from_json(json_object *o, struct filter_def *f, struct qv_err *e);
json_object *filter_def_to_json(const struct filter_def *f);
int filter_load(const struct qv_paths *p, const char *name, struct filter_def *f, struct qv_err *e);
int filter_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e);
/* Defines or replaces (atomically) a filter. Running NICs take it at their next plug or lease,
 * or when asked (the CLI's filter define asks their supervisors: ctl filter-reload). */
int filter_define(const struct qv_paths *p, json_object *o, struct filter_def *out, struct qv_err *e);
/* -EBUSY while a defined VM's NIC refers to it. */
int filter_undefine(const struct qv_paths *p, const char *name, struct qv_err *e);

/* A host directory shared with the guest over virtiofs (libvirt's <filesystem>):
 * served by a virtiofsd the supervisor starts and confines; the guest mounts it
 * with `mount -t virtiofs TAG DIR`. */
struct vm_fs {
    char *source;           /* an existing host directory, absolute */
    char tag[VM_FS_TAG_MAX + 1];
    bool readonly;
};

struct vm_io_limit {
    char *device;           /* a block device path; its major:minor is read at start */
    uint64_t read_bps, write_bps, read_iops, write_iops;   /* 0: unlimited */
};

/* QEMU's pids limit unless limits.pids says: its threads (one per vCPU on top), the
 * I/O worker pool (64 per AioContext), a few more; a fork bomb from a compromised
 * QEMU hits it */
#define VM_DEFAULT_PIDS_MAX 512
/* cgroup limits; 0/NULL: not limited (memory_max 0: guest RAM + QEMU's overhead) */
struct vm_limits {
    uint64_t memory_max;
    char *cpu;              /* "150%" of one CPU */
    int cpu_weight;         /* 1..10000 */
    int64_t pids;
    int io_weight;          /* 1..10000 */
    struct vm_io_limit *io;
    size_t nio;
};
/* What a VM's systemd unit is limited to (the generator's MemoryMax= and TasksMax=):
 * QEMU's limits (limits.memory_max or guest RAM + QEMU's overhead, the larger TCG one
 * unless accel is kvm; limits.pids or the default) plus room for the supervisor.
 * Under cgroup v2 QEMU's cgroup is in its unit's, so these are what bounds it. */
struct vm_def;
uint64_t vm_unit_memory_max(const struct vm_def *d);
uint64_t vm_unit_tasks_max(const struct vm_def *d);

struct vm_sandbox {
    char *user;             /* NULL: a dynamic uid of its own */
    char *group;            /* supplementary group for shared images; NULL: none */
    bool seccomp;           /* default true */
    bool coredump;          /* default false: RLIMIT_CORE 0 */
    char *chroot;           /* a read-only tree as QEMU's root instead of the host's binds */
    struct strv extra_deny; /* more syscalls answering EPERM */
    struct strv require;    /* steps that must not be skipped: cgroup, mount, ..., "all" */
};

/* cloud-init NoCloud seed: an ISO (label cidata: user-data, meta-data) the supervisor
 * builds into the run directory at each start and attaches as a read-only cdrom. */
struct vm_cloud_init {
    char *user_data;        /* NULL: no seed */
    char *meta_data;        /* NULL: "instance-id: UUID" and "local-hostname: NAME" */
};

/* A systemd credential for the guest (SMBIOS type 11, as systemd-vmspawn passes
 * them): its value inline or read from a file at each start, never on QEMU's
 * command line (an inherited memfd), never shown. */
struct vm_credential {
    char *name;
    char *value;            /* NULL: read from file */
    char *file;
};
#define VM_CREDENTIALS_MAX 64
#define VM_CREDENTIALS_BYTES (32u << 10)    /* values together (inline) or each (files) */
#define VM_CREDENTIALS_SMBIOS (48u << 10)   /* their SMBIOS strings together: the table holds 64 KiB */

/* "tpm": {"model": "tpm-crb" | "tpm-tis"}; TPM_NONE without the key */
enum tpm_model { TPM_NONE, TPM_CRB, TPM_TIS };
extern const char *const tpm_model_names[];     /* "none", "tpm-crb", "tpm-tis" */

/* "hostdevs": a host PCI function by address (vfio-pci), or a USB device by
 * vendor:product or by bus and device number (usb-host). */
#define VM_MAX_HOSTDEVS 8
#define VM_HOSTDEV_PORTS 4   /* q35: root ports for them at 0x1c.4-7 (rp0-3 stay for hotplug) */
enum hostdev_type { HOSTDEV_PCI, HOSTDEV_USB };
struct vm_hostdev {
    enum hostdev_type type;
    char address[16];           /* pci: "0000:01:00.0" (normalised, lower case) */
    int vendor, product;        /* usb by id: 0x0001-0xffff; 0 when by bus/device */
    int bus, device;            /* usb by place: 1-255, 1-127; 0 when by id */
    char id[24];                /* QEMU's device id: hostdevN (or what attach-device named) */
};

struct vm_def {
    char *name;
    char uuid[37];
    char *description;
    enum vm_machine machine;
    enum vm_accel accel;
    struct {
        char *model;        /* NULL: host under KVM, max under TCG */
        int count, sockets, cores, threads;   /* 0: not given */
        /* cpu.pinning (config_tuning.c): host CPU lists as written ("0-1,4"), checked
         * for syntax and range; applied by the supervisor to QEMU's threads */
        char **pin_vcpus;   /* npin_vcpus entries (count, up to max with cpu.max), or NULL */
        int npin_vcpus;
        char *pin_emulator; /* every QEMU thread that is not a vCPU; NULL: not pinned */
        enum vm_physaddr physaddr;
        int physaddr_bits;  /* emulate: phys-bits; passthrough: the limit, 0 for none */
        int max;            /* vCPUs `setvcpus` may reach (-smp maxcpus); 0: count, no hotplug */
    } cpu;
    struct {
        uint64_t bytes;
        uint64_t hugepage_size;     /* 0: ordinary pages; 2M or 1G */
        bool shared;                /* shared is implied by filesystems (vm_memory_shared) */
        bool balloon;               /* a virtio-balloon: `setmem` lowers the guest's memory live */
    } memory;
    struct vm_numa_node *numa;
    size_t nnuma;
    struct {
        enum vm_firmware firmware;
        char *kernel, *initrd, *cmdline;
        enum boot_dev order[3];
        int norder;         /* 0: devices carry boot_index, or kernel boot */
    } boot;
    struct vm_disk *disks;
    size_t ndisks;
    struct vm_cdrom *cdroms;
    size_t ncdroms;
    struct vm_nic *nics;
    size_t nnics;
    struct vm_fs *filesystems;
    size_t nfilesystems;
    enum console_kind console;
    struct {
        enum graphics_kind kind;
        char *listen;
        int port;           /* -1: auto */
        char *password_secret;
        enum video_model video; /* with vnc; VIDEO_VGA by default */
        bool tablet;            /* a USB tablet: the pointer follows the VNC client's */
    } graphics;
    /* devices libvirt users rely on (config_devices.c) */
    bool rng;                   /* virtio-rng fed by QEMU's getrandom() (rng-builtin) */
    struct {
        bool on;                /* an i6300esb watchdog */
        enum watchdog_action action;
    } watchdog;
    enum clock_offset clock_offset;
    /* a TPM 2.0 served by a swtpm the supervisor starts (config_passthrough.c) */
    enum tpm_model tpm;
    /* host devices handed to the guest (vfio-pci, usb-host) */
    struct vm_hostdev hostdevs[VM_MAX_HOSTDEVS];
    size_t nhostdevs;
    bool clock_adjust;          /* the RTC starts at (now + clock_adjustment) at each QEMU start */
    int64_t clock_adjustment;   /* seconds */
    bool agent;
    /* isa-debug-exit at I/O port 0xf4: a guest that writes CODE there ends QEMU with
     * status CODE*2+1, its own verdict (qvisor boot) */
    bool exit_device;
    enum on_poweroff on_poweroff;
    enum on_reboot on_reboot;
    enum on_crash on_crash;
    struct vm_limits limits;
    struct vm_sandbox sandbox;
    struct strv qemu_args;
    struct vm_cloud_init cloud_init;
    struct vm_credential *credentials;
    size_t ncredentials;
    bool transient;         /* not in etc/: lives in its run directory while it runs */
    /* started at boot: its unit enabled under systemd, `qvisor autostart --run` elsewhere */
    bool autostart;
};

/* "0-3,8,10-11" -> set[i] = 1 for each CPU i listed (set holds `limit` bytes, cleared
 * here); -EINVAL for bad syntax, -ERANGE for a CPU >= limit (config_tuning.c). */
int vm_cpulist_parse(const char *s, unsigned limit, unsigned char *set);

/* Guest RAM is a shared memfd: asked for, or needed by a virtiofsd that maps it. */
static inline bool vm_memory_shared(const struct vm_def *d)
{
    return d->memory.shared || d->nfilesystems > 0;
}

void vm_def_free(struct vm_def *d);     /* leaves it zeroed: freeing twice is harmless */
/* A definition freed at the end of its scope; initialise it with {0}. */
#define _cleanup_vm_def_ _cleanup_(vm_def_free)
/* *to takes what *from holds; *from is left empty (for a _cleanup_vm_def_ local). */
static inline void vm_def_move(struct vm_def *to, struct vm_def *from)
{
    *to = *from;
    *from = (struct vm_def){0};
}
void vm_disk_free(struct vm_disk *k);
void vm_nic_free(struct vm_nic *n);
/* One disk or NIC (hotplug), checked as in a definition for VM d; a disk's format
 * is read from its image header when not given. */
int vm_disk_from_json(json_object *o, const struct vm_def *d, struct vm_disk *out, struct qv_err *e);
int vm_nic_from_json(json_object *o, const struct vm_def *d, struct vm_nic *out, struct qv_err *e);
json_object *vm_disk_to_json(const struct vm_disk *k);
json_object *vm_nic_to_json(const struct vm_nic *n);
/* One host device (attach-device), checked as in a definition for VM d (NULL: only
 * the device itself, as detach-device names it). */
int vm_hostdev_from_json(json_object *o, const struct vm_def *d, struct vm_hostdev *out, struct qv_err *e);
json_object *vm_hostdev_to_json(const struct vm_hostdev *h);
/* "pci 0000:01:00.0", "usb 046d:c52b" or "usb bus 1 device 3": how messages name it. */
void vm_hostdev_name(const struct vm_hostdev *h, char *out, size_t len);
/* The -device / device_add object of host device h: vfio-pci on `bus` (NULL: QEMU picks),
 * usb-host on usb0 opening `fdset_path` (/dev/fdset/N); the command line and attach-device
 * build the same one. */
json_object *vm_hostdev_device(const struct vm_hostdev *h, const char *bus, const char *fdset_path);
/* Parses and validates a definition; fills every default. On error nothing is
 * allocated and e says "path: value is not one of ...". */
int vm_def_from_json(json_object *o, struct vm_def *d, struct qv_err *e);
/* The normalised definition, defaults filled in; from_json(to_json(d)) == d. */
json_object *vm_def_to_json(const struct vm_def *d);
/* The same for people to read (show, define --print): credentials by name (and
 * file), never their values. */
json_object *vm_def_to_json_public(const struct vm_def *d);
/* A stored definition holding inline credential values is root's alone (0600). */
mode_t vm_def_file_mode(const struct vm_def *d);
/* Credential i's value, from the definition or its file (read now, as the
 * supervisor does at each start; at most VM_CREDENTIALS_BYTES); errors name the
 * credential and the file, never the value. */
int vm_credential_value(const struct vm_def *d, size_t i, char **value, size_t *len, struct qv_err *e);
/* The text of the seed's meta-data: the file's, or the default from uuid and name. */
int vm_cloud_init_meta(const struct vm_def *d, char **text, size_t *len, struct qv_err *e);
/* The SMBIOS type 11 string that carries a credential, as systemd reads it
 * ("io.systemd.credential.binary:NAME=BASE64"); the caller frees and wipes it. */
char *vm_credential_smbios(const char *name, const char *value, size_t len, size_t *outlen);
/* The seed's user-data, read from its file now. */
int vm_cloud_init_user(const struct vm_def *d, char **text, size_t *len, struct qv_err *e);

/* ---- host facts ------------------------------------------------------------------ */
struct host_facts {
    char qemu[PATH_MAX];
    int qemu_major, qemu_minor, qemu_micro;
    bool io_uring;          /* QEMU's blockdev aio knows io_uring */
    bool kvm_usable;        /* /dev/kvm opens and answers KVM_GET_API_VERSION */
    bool vhost_net;         /* /dev/vhost-net opens */
    enum vm_accel accel_override;   /* QVISOR_ACCEL or host.json "accel"; AUTO if neither */
    int64_t now;            /* the time the plan is built for (clock.adjustment), seconds since the epoch:
                             * refreshed before each QEMU start unless pinned */
    int64_t utc_offset;     /* seconds east of UTC of the host's local time at `now` (clock.offset
                             * localtime), in qvisor's zone: TZ, else /etc/localtime */
    bool now_pinned;
    char ovmf_code[PATH_MAX];       /* from QEMU's firmware descriptors; "" if none */
    char ovmf_vars[PATH_MAX];
};

/* host.json: defaults for this host. */
struct host_config {
    char *qemu;             /* binary, default qemu-system-x86_64 from PATH */
    enum vm_accel accel;
    uid_t uid_first, uid_last;  /* dynamic VM users: default 70000..99999 */
    char *cgroup_parent;    /* below each cgroup hierarchy root; default "qvisor" */
    char *ctl_group;        /* members may use the VMs' control sockets (0660); NULL: root only (0600) */
    uint64_t log_max_size;  /* a VM's log is rotated past this size (default 8 MiB) */
    int log_max_backups;    /* and this many rotated files are kept (default 3) */
    char *tpm_ca;           /* swtpm_localca's directory (the TPMs' EK CA); NULL: var/lib/qvisor/tpm-ca */
};
#define LOG_MAX_SIZE (8ull << 20)
#define LOG_MAX_BACKUPS 3
int host_config_load(const struct qv_paths *p, struct host_config *hc, struct qv_err *e);
void host_config_free(struct host_config *hc);
#define _cleanup_host_config_ _cleanup_(host_config_free)
/* Sets now and the local time's offset from UTC at that time. */
void host_facts_set_now(struct host_facts *f, int64_t now);
/* Probes QEMU (cached under var/cache/qvisor by binary path, size and mtime), KVM,
 * vhost-net and firmware. */
int host_facts_probe(const struct qv_paths *p, const struct host_config *hc,
                     struct host_facts *f, struct qv_err *e);
/* Reads OVMF code/vars paths from QEMU's firmware descriptors in `dirs`. */
int firmware_find_uefi(const char *const *dirs, char *code, size_t codelen, char *vars, size_t varslen);
enum vm_accel accel_resolve(const struct vm_def *d, const struct host_facts *f);

/* ---- the QEMU command line --------------------------------------------------------- */
/* What each inherited fd must hold; the supervisor opens these and dup2s them to
 * `fd` in the child, so the argv (which names the numbers) stays deterministic. */
enum fd_kind {
    FD_QMP,         /* listening socket */
    FD_CONSOLE,     /* listening socket */
    FD_QGA,         /* listening socket */
    FD_DISK,        /* image file; index = disk */
    FD_DISK_BASE,   /* read-only base under a throw-away overlay; index = disk */
    FD_DISK_LAYER,  /* a backing layer, read-only; index = disk, sub = layer (0: the top's backing file) */
    FD_OVERLAY,     /* throw-away qcow2 overlay; index = disk */
    FD_CDROM,       /* index = cdrom */
    FD_SEED,        /* the cloud-init seed ISO built at this start */
    FD_CREDENTIAL,  /* a sealed memfd with credential `index`, read by QEMU as /proc/self/fd/N */
    FD_NVRAM,       /* the VM's UEFI variable store */
    FD_TAP,         /* index = nic, sub = queue */
    FD_VHOST,       /* index = nic, sub = queue */
    FD_VIRTIOFS,    /* a connected socket to the share's virtiofsd; index = filesystem */
    FD_TPM,         /* a connected socket to the VM's swtpm (its control channel) */
    FD_USBHOST,     /* /dev/bus/usb/BBB/DDD of hostdev `index`, opened by the supervisor */
    FD_RBD_KEY,     /* a sealed memfd with the cephx key of disk `index`, read by QEMU as /proc/self/fd/N */
};
#define FD_FIRST 3
#define PLAN_MAX_FDS 128

struct fd_slot {
    int fd;
    enum fd_kind kind;
    int index, sub;
    int open_flags;         /* for files: O_RDONLY or O_RDWR */
};

struct launch_plan {
    struct strv argv;
    struct fd_slot slots[PLAN_MAX_FDS];
    size_t nslots;
    enum vm_accel accel;
    /* cgroup limits derived from the definition (0: not limited); io devices are
     * resolved at start, they name host state */
    uint64_t memory_max;                /* limits.memory_max, or guest RAM + QEMU's overhead */
    uint64_t cpu_quota_us, cpu_period_us;   /* from limits.cpu */
    /* QEMU opens host sockets itself (user-mode NICs, a VNC listener, whatever
     * qemu_args may ask for), so it shares the host's network namespace; otherwise
     * every network resource comes as an fd and it gets an empty one. */
    bool host_network;
    /* QEMU's rbd driver talks to Ceph clusters (disks on rbd volumes): it keeps the
     * host's network namespace (host_network is set too), and, unless something else
     * needs the host's network open, an nft filter on QEMU's uid lets it reach only
     * the clusters' monitors and OSDs. */
    bool cluster_network;
    bool cluster_filter;
};
void launch_plan_free(struct launch_plan *p);
/* Pure: the same definition and facts always give the same argv. */
int build_launch_plan(const struct vm_def *d, const struct host_facts *f, struct launch_plan *out,
                      struct qv_err *e);

/* How a disk's cache and aio settings map onto QEMU's block layer; aio "auto" is
 * io_uring when QEMU has it, else native with O_DIRECT, else threads. */
struct disk_io {
    bool direct, no_flush, write_cache;
    const char *aio;
};
struct disk_io disk_io_mode(enum disk_cache cache, enum disk_aio aio, const struct host_facts *f);
/* blockdev-add objects: the same for the command line and for hotplug. */
json_object *blockdev_file(const char *node, const char *filename, const struct disk_io *io, bool discard, bool readonly);
json_object *blockdev_format(const char *driver, const char *node, const char *file_node, const char *backing,
                             const struct disk_io *io, bool discard, bool readonly);

/* ---- definitions on disk ------------------------------------------------------------- */
int vm_def_path(const struct qv_paths *p, const char *name, char *out, size_t outlen);
/* Loads etc/qvisor/vms/NAME.json; -ENOENT with "no VM named NAME" when absent. */
int vm_load(const struct qv_paths *p, const char *name, struct vm_def *d, struct qv_err *e);
/* Validates, fills uuid/MACs/formats, checks uniqueness, writes atomically. */
int vm_define(const struct qv_paths *p, json_object *o, bool replace, struct vm_def *out,
              struct qv_err *e);
int vm_undefine(const struct qv_paths *p, const char *name, struct qv_err *e);
/* A transient VM (virsh create): validated and given its identity like a defined
 * one, but written to run/qvisor/vms/NAME/definition.json, where vm_load and
 * vm_list_names find it until vm_transient_forget (when it stops). -EEXIST when the
 * name is taken by a defined or another transient VM. */
int vm_create_transient(const struct qv_paths *p, json_object *o, struct vm_def *out, struct qv_err *e);
void vm_transient_forget(const struct qv_paths *p, const char *name);
/* A running transient VM becomes a defined one (migrate --persistent): its definition
 * written atomically under etc/, then the transient file goes. -EEXIST when the name
 * is defined already (that definition stays). */
int vm_transient_persist(const struct qv_paths *p, const struct vm_def *d, struct qv_err *e);
/* A running VM's disk moved to another image (a block copy pivoted, an active commit
 * dropped the top, an external snapshot added one): in NAME's stored definition
 * (etc/, or a transient VM's run directory) the disk that names `old` (its volume
 * POOL/NAME or its file) now names volume `volume`, or file `file` when volume is
 * NULL, in `format`. Everything else stays as stored (an edit made meanwhile too);
 * written atomically under the definitions' lock. -ENOENT when no stored disk names
 * `old` (nothing is written then). */
int vm_disk_image_update(const struct qv_paths *p, const char *name, const char *old, const char *volume,
                         const char *file, enum disk_format format, struct qv_err *e);
/* Sorted names of all defined VMs. */
int vm_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e);
/* The generated MAC for NIC `index` of VM `uuid`, perturbed by `attempt`. */
void mac_generate(const char *uuid, size_t index, unsigned attempt, char out[18]);
/* Whether a defined VM other than `except` (may be NULL) has a NIC with this MAC. */
bool vm_mac_in_use(const struct qv_paths *p, const char *mac, const char *except);
/* storage_detect_format in the definition's terms (qcow2 or raw). */
static inline int image_detect_format(const char *path, enum disk_format *fmt, struct qv_err *e)
{
    enum storage_format sf;
    int r = storage_detect_format(path, &sf, e);
    if (r == 0)
        *fmt = sf == STORAGE_FORMAT_QCOW2 ? FORMAT_QCOW2 : FORMAT_RAW;
    return r;
}

/* ---- saved states (savefile.c): qvisor save/restore, managedsave ------------------------- */
/* var/lib/qvisor/save/NAME.state */
int managedsave_path(const struct qv_paths *p, const char *name, char *out, size_t outlen);
bool managedsave_exists(const struct qv_paths *p, const char *name);
/* The managed save was made by shutdown-all --save: the VM ran when the host went down,
 * and autostart --run resumes it even without autostart (libvirt-guests' list). */
int managedsave_mark_resume(const struct qv_paths *p, const char *name, bool on);
bool managedsave_resume_marked(const struct qv_paths *p, const char *name);
/* What the guest runs with beyond its definition, which the header records:
 * vcpus: more than cpu.count once setvcpus plugged some (a restore plugs them before
 * the stream: QEMU's stream carries their state, not the devices); balloon_target:
 * the size setmem asked the balloon for (0: none), asked again once restored. */
struct savefile_live {
    int vcpus;
    uint64_t balloon_target;
};
/* The header (magic line, JSON with the definition, padding to a 4 KiB multiple) at
 * the start of fd; the file offset is left at its end, where QEMU's stream goes. */
int savefile_write_header(int fd, const struct vm_def *d, const char *state, const char *qemu_version,
                          const struct savefile_live *live, struct qv_err *e);
/* The vCPUs the header records (cpu.count when it records none); -EINVAL naming the file
 * when they do not fit now's definition (more than its cpu.max). */
int savefile_vcpus(const char *file, json_object *header, const struct vm_def *now, int *vcpus, struct qv_err *e);
/* The balloon target the header records; 0 when none. (tuning_balloon_carry, which asks
 * for it again, passes over one that does not fit now's definition.) */
uint64_t savefile_balloon_target(json_object *header);
/* header: {"name", "state", "qemu_version", "saved_at_ms", "definition", ["vcpus"],
 * ["balloon_target"]}; *data_off:
 * where QEMU's stream starts. -EINVAL for a file that is not a complete saved state. */
int savefile_read_header(const char *path, int fd, json_object **header, off_t *data_off, struct qv_err *e);
/* Opens path read-only and reads its header and the definition it records. */
int savefile_open(const char *path, json_object **header, struct vm_def *saved, off_t *data_off, int *fd,
                  struct qv_err *e);
/* -EINVAL naming the first difference that matters to the guest ("memory: saved
 * \"128M\", now \"256M\"") and the fix; host-side settings (policies, limits) may differ. */
int savefile_check_definition(const char *file, const struct vm_def *saved, const struct vm_def *now,
                              struct qv_err *e);

/* ---- run state: run/qvisor/vms/NAME/{lock,pid,state.json} -------------------------------- */
enum vm_state { VM_SHUTOFF, VM_STARTING, VM_RUNNING, VM_PAUSED, VM_STOPPING, VM_CRASHED };
extern const char *const vm_state_names[];

struct vm_runstate {
    enum vm_state state;
    pid_t supervisor_pid;
    pid_t qemu_pid;
    unsigned long long qemu_start;  /* ticks since boot, /proc/PID/stat field 22 */
    char uuid[37];
    uint64_t started_at_ms;         /* wall clock */
    char accel[8];                  /* what query-kvm said is in use */
    char qemu_version[32];
    char last_exit[256];
    char state_reason[256];         /* why it is paused, when QEMU said (an I/O error); "" otherwise */
    bool exiting;                   /* QEMU is gone and recorded: the supervisor, as long as it
                                     * holds the lock, only releases the cgroup, taps, run files */
    json_object *resources;         /* recorded before creation: taps, cgroup, uid, ... */
};
/* run/qvisor/vms/NAME[/file] */
int vm_run_path(const struct qv_paths *p, const char *name, const char *file, char *out, size_t outlen);
/* var/lib/qvisor/boot/NAME[/file]: a `qvisor boot` VM's private directory (its log,
 * its throw-away overlays), on disk as overlays can grow */
int vm_boot_dir(const struct qv_paths *p, const char *name, const char *file, char *out, size_t outlen);
/* The uid lease files (run/qvisor/uids/N) NAME held that nobody holds now, removed.
 * Returns how many stay because a process still holds them or runs as their uid. */
int vm_uid_leases_forget(const struct qv_paths *p, const char *name);
int runstate_read(const struct qv_paths *p, const char *name, struct vm_runstate *s, struct qv_err *e);
int runstate_write(const struct qv_paths *p, const char *name, const struct vm_runstate *s, struct qv_err *e);
json_object *runstate_to_json(const struct vm_runstate *s);
void runstate_free(struct vm_runstate *s);
#define _cleanup_runstate_ _cleanup_(runstate_free)
/* The recorded QEMU still runs: same pid, same start time, and our uuid on its command
 * line (or, while "starting", not yet exec'd). A reused pid never passes. */
bool qemu_alive(const struct vm_runstate *s);
struct qemu_found {
    pid_t pid;
    unsigned long long start;
    const char *route;      /* how it was found, for the log */
};
/* Looks for a live QEMU of this VM (its uuid after "-uuid") by every route: the state
 * file `rs` (may be NULL; a recorded child not yet exec'd is waited for), the pid file,
 * the recorded cgroup's procs, and a scan of /proc. 1 found, 0 none, -errno. */
int vm_find_qemu(const struct qv_paths *p, const char *name, const char *uuid, const struct vm_runstate *rs,
                 struct qemu_found *out);
/* DIR/lock, taken by the one supervisor of a VM or network: -EBUSY ("WHAT is
 * already running (pid N)") if held. Only the flock counts, never the file. */
int runlock_take(const char *dir, const char *what, int *fd, pid_t *holder, struct qv_err *e);
bool runlock_held(const char *dir, pid_t *holder);
/* Takes the supervisor lock; -EBUSY ("web1 is already running (pid N)") if held. A holder
 * that has recorded its end ("exiting") is waited for, as vm_supervised does. */
int vm_lock(const struct qv_paths *p, const char *name, int *fd, pid_t *holder, struct qv_err *e);
/* Whether a supervisor holds the VM's lock. One that has answered stop or kill and only
 * cleans up (state.json "exiting", written by the lock's holder) is waited for, at most
 * VM_EXIT_WAIT_MS: what follows a stop never meets it, and never its cleanup. */
#define VM_EXIT_WAIT_MS 10000
bool vm_supervised(const struct qv_paths *p, const char *name, pid_t *holder);
/* What is true now, with or without a supervisor. */
int vm_observe(const struct qv_paths *p, const char *name, struct vm_runstate *s, bool *supervised);

#endif
