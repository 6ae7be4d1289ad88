/* launcher/model: what a VM and a network are, and what the host says about them —
 * definitions and their validation, the store under etc/, host facts, the pure
 * launch plan (argv, fd slots and every derived value), and the run state files
 * under run/ that tell what is running without asking anyone. Nothing here starts
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
/* The header (magic line, JSON with the definition, padding to a 4 KiB multiple) at
 * the start of fd; the file offset is left at its end, where QEMU's stream goes. */
int savefile_write_header(int fd, const struct vm_def *d, const char *state, const char *qemu_version,
                          struct qv_err *e);
/* header: {"name", "state", "qemu_version", "saved_at_ms", "definition"}; *data_off:
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

/* ---- network definitions: etc/qvisor/networks/NAME.json ------------------------------------ */
enum net_mode { NET_NAT, NET_ISOLATED, NET_ROUTED, NET_BRIDGE };
extern const char *const net_mode_names[];

struct net_host {
    char *mac, *ip, *name;
};

struct net_forward {
    bool udp;
    int host_port;
    char *guest;
    int guest_port;
};

struct net_def {
    char *name;
    enum net_mode mode;
    char *bridge;           /* generated for managed networks; the host's for mode bridge */
    unsigned mtu;           /* 0: kernel default */
    struct {
        char *address;      /* the host's side, "10.77.0.1/24" */
        struct netsetup_cidr cidr;
        char *dhcp_start, *dhcp_end;    /* NULL: no dynamic range */
        unsigned lease_time;
        struct net_host *hosts;
        size_t nhosts;
    } ipv4;
    struct {
        char *address;
        struct netsetup_cidr cidr;
        char *dhcp_start, *dhcp_end;    /* NULL: SLAAC only */
    } ipv6;
    struct {
        char *domain;
        struct strv forwarders;
    } dns;
    struct net_forward *forwards;
    size_t nforwards;
    bool autostart;
};
void net_def_free(struct net_def *n);   /* leaves it zeroed */
#define _cleanup_net_def_ _cleanup_(net_def_free)
static inline void net_def_move(struct net_def *to, struct net_def *from)
{
    *to = *from;
    *from = (struct net_def){0};
}
int net_def_from_json(json_object *o, struct net_def *n, struct qv_err *e);
json_object *net_def_to_json(const struct net_def *n);
int net_def_path(const struct qv_paths *p, const char *name, char *out, size_t outlen);
/* "default" is defined on first use, on a 10.77.N.0/24 the host does not use. */
int net_load(const struct qv_paths *p, const char *name, struct net_def *n, struct qv_err *e);
int net_define(const struct qv_paths *p, json_object *o, bool replace, struct net_def *out, struct qv_err *e);
int net_define_default(const struct qv_paths *p, struct net_def *out, struct qv_err *e);
int net_undefine(const struct qv_paths *p, const char *name, struct qv_err *e);
int net_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e);
/* net update: a static host ({"mac", "ip", "name"}) or a port forward ({"protocol",
 * "host_port", "guest", "guest_port"}) added to or deleted from a definition. Deleting
 * a host matches every key given; a forward is known by protocol (default tcp) and
 * host_port. *out is the validated result (-EEXIST: already there, -ENOENT: no such
 * item, -EINVAL: the result is not valid, with its JSON path). */
enum net_update_op { NET_UPDATE_ADD, NET_UPDATE_DELETE };
enum net_update_section { NET_UPDATE_HOST, NET_UPDATE_FORWARD };
extern const char *const net_update_section_names[];   /* "host", "forward" */
int net_def_update(const struct net_def *cur, enum net_update_op op, enum net_update_section sec, json_object *item,
                   struct net_def *out, struct qv_err *e);
/* The same on the stored definition, under the networks' lock, written atomically. */
int net_update_config(const struct qv_paths *p, const char *name, enum net_update_op op, enum net_update_section sec,
                      json_object *item, struct net_def *out, struct qv_err *e);
/* The parts of `to` that differ from `from`, as "mode", "ipv4.dhcp", ... (autostart
 * left out), appended to `changed`. */
void net_def_diff(const struct net_def *from, const struct net_def *to, struct strv *changed);
/* -EADDRINUSE when the network's subnets overlap the host's addresses or routes. */
int net_check_host(const struct net_def *n, struct qv_err *e);
/* run/qvisor/networks/NAME: lock, state.json, dnsmasq's files */
int net_run_dir(const struct qv_paths *p, const char *name, char *out, size_t outlen);
/* Whether a network supervisor holds the network's lock (its pid in *holder). */
bool net_running(const struct qv_paths *p, const char *name, pid_t *holder);

/* At start: each volume disk's file and format from its volume, and every disk's
 * backing chain opened, checked (missing layers, loops, protocols) and recorded in
 * disk->backing for the launch plan. Errors name the VM, the disk and the volume. */
int vm_resolve_disks(const struct qv_paths *p, struct vm_def *d, struct qv_err *e);
void vm_disk_rbd_free(struct vm_disk_rbd *r);   /* and the struct itself */
/* The blockdev node of an rbd disk: pool, image, monitors, user, and key-secret
 * `key_secret` (NULL: auth none), with the cache and read-only flags of its disk. */
json_object *blockdev_rbd(const char *node, const struct vm_disk_rbd *r, const char *key_secret,
                          const struct disk_io *io, bool discard, bool readonly);
/* The same for one disk (a hotplugged one). */
int vm_resolve_disk(const struct qv_paths *p, struct vm_disk *k, struct qv_err *e);
/* fd, just opened by path for layer `layer` of k (0: the top, j + 1: backing[j]), is the
 * file vm_resolve_disk checked: one put in its place since (a rename over it) is refused
 * with -ESTALE, so QEMU never gets a layer nobody checked. */
int vm_disk_check_fd(const struct vm_disk *k, size_t layer, int fd, struct qv_err *e);

/* ---- secrets: etc/qvisor/secrets/NAME (the value) + NAME.json (uuid, usage, description) ----
 * 0600 files in a 0700 directory, written atomically. A value file alone (written by hand)
 * is a secret without a usage. Values leave only through secret_read_value. */
struct secret_def {
    char *name;
    char uuid[37];          /* "" for a value file without its NAME.json */
    char *usage;            /* "ceph:client.libvirt", or NULL */
    char *description;
    bool has_value;
};
void secret_def_free(struct secret_def *d);
#define _cleanup_secret_def_ _cleanup_(secret_def_free)
int secret_load(const struct qv_paths *p, const char *name, struct secret_def *d, struct qv_err *e);
int secret_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e);
/* Defines NAME, or updates the usage/description given (*updated); the value stays.
 * -EEXIST when another secret has the usage. */
int secret_define(const struct qv_paths *p, const char *name, const char *usage, const char *description,
                  struct secret_def *out, bool *updated, struct qv_err *e);
/* The value (trailing newlines dropped; no NUL, at most 4 KiB); e never holds it. */
int secret_set_value(const struct qv_paths *p, const char *name, const char *value, size_t len, struct qv_err *e);
/* The file holding the value, for a library that reads a key file itself (librados). */
void secret_value_path(const struct qv_paths *p, const char *name, char *out, size_t n);
/* The value into *out (the caller wipes and frees it); -EPERM when others may read the file. */
int secret_read_value(const struct qv_paths *p, const char *name, char **out, struct qv_err *e);
/* "web1 (running)" for every running VM that uses the secret. */
int secret_users(const struct qv_paths *p, const char *name, struct strv *users, struct qv_err *e);
/* -EBUSY naming the users; the value and the metadata go. */
int secret_undefine(const struct qv_paths *p, const char *name, struct qv_err *e);

/* ---- storage pools: etc/qvisor/pools/NAME.json -------------------------------------------- */
struct pool_def {
    char *name;
    char *type;             /* a storage backend's type: "dir", "rbd" */
    char *path;             /* dir: the directory, absolute */
    /* rbd: {"pool": "rbd", "monitors": ["HOST[:PORT]", ...] and/or "ceph_conf": "/abs",
     * "user": "libvirt", "secret": "NAME"} (user defaults to admin; no secret: auth none) */
    char *rbd_pool;
    struct strv monitors;
    char *ceph_conf;
    char *user;
    char *secret;
    char *keyfile;          /* the secret's value file, set by pool_load/pool_define; never in JSON */
};
void pool_def_free(struct pool_def *d);    /* leaves it zeroed */
#define _cleanup_pool_def_ _cleanup_(pool_def_free)
int pool_def_from_json(json_object *o, struct pool_def *d, struct qv_err *e);
json_object *pool_def_to_json(const struct pool_def *d);
int pool_def_path(const struct qv_paths *p, const char *name, char *out, size_t outlen);
/* The backend's view of the pool (borrows d's strings), and its backend row. */
struct storage_pool pool_storage(const struct pool_def *d);
const struct storage_backend *pool_backend(const struct pool_def *d);
/* "default" (a dir pool at var/lib/qvisor/images) is defined on first use. */
int pool_load(const struct qv_paths *p, const char *name, struct pool_def *d, struct qv_err *e);
/* The definition alone: no key file bound (a secret without a value does not fail it). */
int pool_read(const struct qv_paths *p, const char *name, struct pool_def *d, struct qv_err *e);
/* pool_load, and the pool's place exists (a dir pool's directory is made). */
int pool_open(const struct qv_paths *p, const char *name, struct pool_def *d, struct qv_err *e);
/* Validates, refuses a directory another pool has, makes the directory, writes atomically. */
int pool_define(const struct qv_paths *p, json_object *o, bool replace, struct pool_def *out, struct qv_err *e);
/* -EBUSY naming the VMs whose disks are volumes of the pool. The volumes stay. */
int pool_undefine(const struct qv_paths *p, const char *name, struct qv_err *e);
int pool_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e);
/* "web1 (running)" for every VM with a disk in the pool. */
int pool_users(const struct qv_paths *p, const char *pool, struct strv *users, struct qv_err *e);

/* ---- volumes: "POOL/NAME" ------------------------------------------------------------------- */
struct vol_ref {
    char pool[65];
    char name[65];
};
/* -EINVAL unless s is POOL/NAME with two valid names. */
int vol_ref_parse(const char *s, struct vol_ref *out, struct qv_err *e);
/* The reference "POOL/NAME" parsed into *ref, the pool (opened) and the volume's info;
 * -EINVAL for a bad reference, -ENOENT naming what is missing. */
int vol_lookup(const struct qv_paths *p, const char *refs, struct vol_ref *ref, struct pool_def *pd,
               struct storage_vol_info *vi, struct qv_err *e);
/* vol_lookup's three results in one, freed at the end of its scope. */
struct vol_found {
    struct vol_ref ref;
    struct pool_def pd;
    struct storage_vol_info vi;
};
void vol_found_free(struct vol_found *v);
#define _cleanup_vol_found_ _cleanup_(vol_found_free)
int vol_find(const struct qv_paths *p, const char *refs, struct vol_found *v, struct qv_err *e);
/* The image path of volume `ref` ("default/web1") and its format (may be NULL). */
int vol_resolve(const struct qv_paths *p, const char *ref, char *path, size_t pathlen, enum disk_format *fmt,
                struct qv_err *e);
/* Where a new volume `ref` of a dir pool will be (a block copy creates it there
 * itself); -EEXIST when the volume exists, -EOPNOTSUPP for other pool types. */
int vol_new_path(const struct qv_paths *p, const char *ref, char *path, size_t pathlen, struct qv_err *e);
/* "web1 (running)", "db (defined)": VMs with a disk whose chain holds the file at `path`. */
int vol_users(const struct qv_paths *p, const struct vol_ref *ref, const char *path, struct strv *users,
              struct qv_err *e);
/* "default/web1-overlay": volumes of every pool with `path` below their top layer. */
int vol_dependents(const struct qv_paths *p, const char *path, struct strv *deps, struct qv_err *e);

struct volume_create_args {
    uint64_t size;          /* 0: the backing file's */
    enum storage_format format; /* PROBE: the pool's (qcow2 in a dir pool, raw in an rbd pool) */
    const char *backing;    /* POOL/VOL or an absolute path; NULL: none */
    enum storage_prealloc prealloc;
};
int volume_create(const struct qv_paths *p, const char *ref, const struct volume_create_args *a, struct qv_err *e);
/* Refused (-EBUSY) when other volumes are built on it, or (unless force) VMs use it. */
#define VOL_DELETE_FORCE 1u         /* even while VMs use it */
#define VOL_DELETE_SNAPSHOTS 2u     /* rbd: with its snapshots (never while they have clones) */
int volume_delete(const struct qv_paths *p, const char *ref, unsigned flags, struct qv_err *e);
/* size "20G" or "+5G"; shrinking needs allow_shrink, and force when VMs use it. */
int volume_resize(const struct qv_paths *p, const char *ref, const char *size, bool allow_shrink, bool force,
                  uint64_t *new_size, struct qv_err *e);
/* The volumes of d's volume disks that may go with it (undefine --remove-storage), into
 * refs; -EBUSY naming the first that another VM uses or other volumes are built on. */
int vm_volumes_removable(const struct qv_paths *p, const struct vm_def *d, struct strv *refs, struct qv_err *e);
/* virt-clone: NEW from the shut-off VM src, new uuid and MACs; writable disks copied into
 * new volumes POOL/NEW-diskN (a volume's own pool, else default), or, when `linked`,
 * given qcow2 overlays on the shared image, the source VM moving onto an overlay
 * POOL/SRC-diskN-top of its own. Nothing stays behind when a step fails. */
int vm_clone(const struct qv_paths *p, const char *src, const char *new_name, bool linked,
             const struct storage_progress *prog, struct qv_err *e);
/* A new volume `ref` holding a full copy of `src`, converted to `format`. */
int volume_copy_in(const struct qv_paths *p, const char *ref, const struct storage_img *src,
                   enum storage_format format, const struct storage_progress *prog, struct qv_err *e);
/* How qemu-img opens volume `ref` (its key, if any, through an --object named secret_id). */
int volume_img(const struct qv_paths *p, const char *ref, const char *secret_id, struct storage_img *out,
               struct qv_err *e);
/* A copy-on-write clone `dstref` of `srcref` at snapshot `snap` (rbd), the snapshot
 * made (*snap_made) and protected as needed. */
int volume_clone_cow(const struct qv_paths *p, const char *srcref, const char *snap, const char *dstref,
                     bool *snap_made, struct qv_err *e);
/* A copy of the volume (its whole chain) in the file `dest`, which must not exist:
 * written to dest.part-PID and renamed when complete. Format: the volume's unless given. */
int volume_export(const struct qv_paths *p, const char *ref, const char *dest, bool have_format,
                  enum storage_format format, const struct storage_progress *prog, struct qv_err *e);
/* What the guest sees, as raw bytes, written to fd `out` (a pipe). */
int volume_export_raw_fd(const struct qv_paths *p, const char *ref, int out, const struct storage_progress *prog,
                         struct qv_err *e);

/* ---- snapshots: var/lib/qvisor/snapshots/VM/ ---------------------------------------------- */
int snapshot_dir(const struct qv_paths *p, const char *vm, char *out, size_t outlen);
/* A disk that snapshots take part in: written by the guest and kept (not readonly,
 * not a throw-away overlay). */
bool snapshot_disk_included(const struct vm_disk *k);
/* A new snapshot NAME of d: the disks that take part with their current tops (and,
 * external, the overlays to make, VM.NAME.qcow2 beside each top), parent = the current
 * snapshot. Refused: a name taken (-EEXIST), a raw disk for an internal snapshot
 * (naming the disk and the ways out), an overlay that exists, no disk at all. */
/* live: the disks attached to the running VM (its supervisor's; NULL when shut off):
 * they take part too, their record entries marked "hotplug" and named by device id. */
struct snapshot_live_disk {
    char id[24];                /* the device: disk3 */
    char file[PATH_MAX];        /* its top image now */
    char volume[160];           /* POOL/NAME when it was attached as a volume; "" else */
    enum disk_format format;
    bool readonly;
};
struct snapshot_live {
    const struct snapshot_live_disk *disks;
    size_t n;
};
int snapshot_plan(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                  const char *name, bool external, struct storage_snapshot *out, struct qv_err *e);
/* Every record, sorted by name; free with snapshot_free_all. */
int snapshot_load_all(const struct qv_paths *p, const char *vm, struct storage_snapshot **out, size_t *n,
                      struct qv_err *e);
void snapshot_free_all(struct storage_snapshot *all, size_t n);
int snapshot_count(const struct qv_paths *p, const char *vm);
/* Removes the records (not the images): undefine --snapshots-metadata. */
int snapshot_forget_all(const struct qv_paths *p, const char *vm, struct qv_err *e);
/* The definition's disks of s name their overlays (to_overlay) or the images below
 * them again; written atomically through vm_define. */
int snapshot_set_disk_images(const struct qv_paths *p, const char *vm, const struct storage_snapshot *s, bool to_overlay,
                             struct qv_err *e);
/* Writes s's record and makes it the current snapshot. */
int snapshot_record(const struct qv_paths *p, const char *vm, const struct storage_snapshot *s, struct qv_err *e);
/* Removes s's record; its children and "current" go to its parent. */
int snapshot_unrecord(const struct qv_paths *p, const char *vm, const struct storage_snapshot *s, struct qv_err *e);
/* Disk `disk` of external snapshot `name` was merged into the image below its
 * overlay: the snapshot whose overlay rested on that overlay rests on the image below
 * now, and the disk leaves the record (the record goes with its last disk, as
 * snapshot_unrecord). Idempotent: a record without the disk, or none, is done. */
int snapshot_disk_merged(const struct qv_paths *p, const char *vm, const char *name, const char *disk,
                         struct qv_err *e);
/* -EBUSY when the disks have moved on since s (a later external snapshot), or a later
 * internal snapshot (of the VM's records, read here) lives in the overlay a revert of
 * external s would empty. */
/* A hotplugged disk of s that live does not hold (detached, the VM restarted or shut
 * off since) is -ENOENT, named: it is never looked for among the definition's disks. */
int snapshot_check_revert(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                          const struct storage_snapshot *s, struct qv_err *e);
/* -EBUSY when deleting external s would lose an internal snapshot living in its
 * overlay, or its overlay is in no chain any more. */
int snapshot_check_delete(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                          const struct storage_snapshot *s, struct storage_snapshot *all, size_t n, struct qv_err *e);
/* A shut-off VM, through qemu-img: create (internal: snapshot -c in every image;
 * external: the overlays, the definition moves onto them), revert (snapshot -a; external:
 * the overlays emptied) and delete (snapshot -d; external: commit into the image below,
 * the definition or the next overlay moves back onto it). All or nothing on create. */
/* Every disk a snapshot takes is an rbd volume (resolved: vm_resolve_disks first). */
bool snapshot_rbd_only(const struct vm_def *d);
/* RBD snapshots of the planned disks, all or nothing, recorded with `state` ("running"
 * when the caller paused the guest around it, "shutoff"). */
int snapshot_create_rbd(const struct qv_paths *p, const struct vm_def *d, struct storage_snapshot *s, const char *state,
                        struct qv_err *e);
int snapshot_create_offline(const struct qv_paths *p, const struct vm_def *d, struct storage_snapshot *s,
                            struct qv_err *e);
int snapshot_revert_offline(const struct qv_paths *p, const struct vm_def *d, const struct storage_snapshot *s,
                            struct qv_err *e);
/* live: for the RBD snapshots of a running VM, deleted in the cluster while it runs
 * (NULL: shut off). */
int snapshot_delete_offline(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                            const struct storage_snapshot *s, struct qv_err *e);

#endif
