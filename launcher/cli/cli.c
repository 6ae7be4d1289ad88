/* qvisor [--root DIR] [--json] [-q] COMMAND ... : global options are accepted before
 * or after the command word, as users type them both ways. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/cli/cli.h"

#define QVISOR_VERSION "0.1"

static const struct cli_opt no_opts[] = {{0}};
static const struct cli_opt pool_show_opts[] = {{"addresses", false, false, 0}, {0}};
/* what the guest gets beside its devices: a cloud-init seed, systemd credentials */
#define GUESTDATA_FLAGS {"cloud-init", true, false, 0}, {"meta-data", true, false, 0}, {"credential", true, true, 0}
/* a definition from flags: define and create take the same ones */
#define DEFINITION_FLAGS                                                                                             \
    {"machine", true, false, 0}, {"accel", true, false, 0}, {"cpus", true, false, 0}, {"cpu-model", true, false, 0}, \
        {"memory", true, false, 0}, {"disk", true, true, 0}, {"cdrom", true, true, 0}, {"nic", true, true, 0},      \
        {"share", true, true, 0},                                                                                   \
        {"kernel", true, false, 0}, {"initrd", true, false, 0}, {"append", true, false, 0},                         \
        {"firmware", true, false, 0}, {"console", true, false, 0}, {"graphics", true, false, 0},                    \
        {"agent", false, false, 0}, {"description", true, false, 0}, {"on-poweroff", true, false, 0},               \
        {"on-reboot", true, false, 0}, {"on-crash", true, false, 0}, GUESTDATA_FLAGS
static const struct cli_opt define_opts[] = {DEFINITION_FLAGS, {"print", false, false, 0}, {0}};
static const struct cli_opt undefine_opts[] = {{"remove-storage", false, false, 0}, {"keep-nvram", false, false, 0}, {"keep-tpm", false, false, 0},
                                               {"snapshots-metadata", false, false, 0},
                                               {"managed-save", false, false, 0}, {0}};
static const struct cli_opt save_opts[] = {{"bypass-cache", false, false, 0}, {"abort", false, false, 0}, {0}};
static const struct cli_opt managedsave_opts[] = {{"bypass-cache", false, false, 0}, {0}};
static const struct cli_opt restore_opts[] = {{"paused", false, false, 0}, {"wait-timeout", true, false, 0}, {0}};
static const struct cli_opt clone_opts[] = {{"linked", false, false, 0}, {0}};
static const struct cli_opt list_opts[] = {{"all", false, false, 'a'}, {0}};
static const struct cli_opt stats_opts[] = {{"prometheus", false, false, 0}, {0}};
static const struct cli_opt show_opts[] = {{"confinement", false, false, 0}, {0}};
static const struct cli_opt run_opts[] = {{"ready-fd", true, false, 0}, {"attach-only", false, false, 0},
                                          {"paused", false, false, 0}, {"load-snapshot", true, false, 0},
                                          {"boot-fd", true, false, 0}, {"stop-timeout", true, false, 0}, {"restore", true, false, 0},
                                          {"restore-remove", false, false, 0}, {"incoming", true, false, 0},
                                          {"incoming-copy-storage", false, false, 0}, {"incoming-tls", true, false, 0},
                                          {"incoming-token", true, false, 0}, {"incoming-timeout", true, false, 0},
                                          {"incoming-postcopy", false, false, 0}, {0}};
static const struct cli_opt migrate_opts[] = {{"to", true, false, 0}, {"bandwidth", true, false, 0},
                                              {"postcopy-bandwidth", true, false, 0},
                                              {"max-downtime", true, false, 0}, {"auto-converge", false, false, 0},
                                              {"undefine-source", false, false, 0}, {"abort", false, false, 0},
                                              {"copy-storage", false, false, 0}, {"postcopy", false, false, 0},
                                              {"tls", true, false, 0}, {"persistent", false, false, 0},
                                              {"remote-qvisor", true, false, 0}, {"remote-root", true, false, 0},
                                              {"ssh-config", true, false, 0}, {"wait-timeout", true, false, 0},
                                              {"token", true, false, 0}, {"unsafe", false, false, 0}, {0}};
static const struct cli_opt evacuate_opts[] = {{"to", true, false, 0}, {"parallel", true, false, 0},
                                               {"bandwidth", true, false, 0}, {"max-downtime", true, false, 0},
                                               {"postcopy-bandwidth", true, false, 0},
                                               {"auto-converge", false, false, 0}, {"undefine-source", false, false, 0},
                                               {"copy-storage", false, false, 0}, {"postcopy", false, false, 0},
                                               {"tls", true, false, 0}, {"persistent", false, false, 0},
                                               {"remote-qvisor", true, false, 0}, {"remote-root", true, false, 0},
                                               {"ssh-config", true, false, 0}, {"wait-timeout", true, false, 0},
                                               {"token", true, false, 0}, {"unsafe", false, false, 0}, {0}};
static const struct cli_opt migrate_in_opts[] = {{"listen", true, false, 0}, {"definition", true, false, 0},
                                                 {"persistent", false, false, 0}, {"wait-timeout", true, false, 0},
                                                 {"copy-storage", false, false, 0}, {"postcopy", false, false, 0},
                                                 {"tls", true, false, 0}, {"cancel", false, false, 0},
                                                 {"token", true, false, 0}, {"timeout", true, false, 0}, {0}};
static const struct cli_opt boot_opts[] = {
    DEFINITION_FLAGS, {"image", true, false, 0}, {"expect", true, true, 0}, {"fail", true, true, 0},
    {"exec", true, false, 0}, {"exec-file", true, false, 0}, {"timeout", true, false, 0}, {"name", true, false, 0},
    {"writable", false, false, 0}, {"keep-on-failure", false, false, 0}, {"prefix", false, false, 0},
    {"junit", true, false, 0}, {"tap", false, false, 0}, {0}};
static const struct cli_opt start_opts[] = {{"wait-timeout", true, false, 0}, {"paused", false, false, 0}, {0}};
static const struct cli_opt create_opts[] = {DEFINITION_FLAGS, {"wait-timeout", true, false, 0}, {0}};
static const struct cli_opt resize_opts[] = {{"allow-shrink", false, false, 0}, {0}};
static const struct cli_opt stop_opts[] = {{"timeout", true, false, 't'}, {"force", false, false, 'f'},
                                           {"mode", true, false, 0}, {0}};
static const struct cli_opt reboot_opts[] = {{"mode", true, false, 0}, {0}};
static const struct cli_opt exec_opts[] = {{"timeout", true, false, 't'}, {"env", true, true, 'e'},
                                           {"stdin", true, false, 0}, {0}};
static const struct cli_opt ifaddr_opts[] = {{"source", true, false, 0}, {0}};
static const struct cli_opt console_opts[] = {{"replay", false, false, 0}, {"idle", true, false, 0},
                                              {"expect", true, false, 0}, {"timeout", true, false, 0}, {0}};
static const struct cli_opt logs_opts[] = {{"follow", false, false, 'f'}, {"lines", true, false, 'n'}, {0}};

static const struct cli_opt net_define_opts[] = {
    {"mode", true, false, 0}, {"bridge", true, false, 0}, {"mtu", true, false, 0}, {"ipv4", true, false, 0},
    {"dhcp", true, false, 0}, {"domain", true, false, 0}, {"forward", true, true, 0}, {"autostart", false, false, 0}, {0}};
static const struct cli_opt net_update_opts[] = {
    {"mac", true, false, 0}, {"ip", true, false, 0}, {"name", true, false, 0}, {"protocol", true, false, 0},
    {"host-port", true, false, 0}, {"guest", true, false, 0}, {"guest-port", true, false, 0},
    {"live", false, false, 0}, {"config", false, false, 0}, {0}};
static const struct cli_opt filter_define_opts[] = {{"name", true, false, 0}, {"rule", true, true, 0}, {0}};
static const struct cli_opt secret_define_opts[] = {{"usage", true, false, 0}, {"description", true, false, 0}, {0}};
static const struct cli_opt secret_set_opts[] = {{"file", true, false, 0}, {0}};
static const struct cli_opt pool_define_opts[] = {
    {"name", true, false, 0}, {"type", true, false, 0}, {"path", true, false, 0}, {"pool", true, false, 0},
    {"monitor", true, true, 0}, {"user", true, false, 0}, {"secret", true, false, 0}, {"ceph-conf", true, false, 0},
    {0}};
static const struct cli_opt vol_create_opts[] = {
    {"size", true, false, 0}, {"format", true, false, 0}, {"backing", true, false, 0},
    {"preallocation", true, false, 0}, {0}};
static const struct cli_opt vol_resize_opts[] = {{"allow-shrink", false, false, 0}, {"force", false, false, 0}, {0}};
static const struct cli_opt vol_clone_opts[] = {
    {"pool", true, false, 0}, {"format", true, false, 0}, {"from-snapshot", true, false, 0}, {0}};
static const struct cli_opt vol_delete_opts[] = {{"force", false, false, 0}, {"delete-snapshots", false, false, 0}, {0}};
static const struct cli_opt format_opts[] = {{"format", true, false, 0}, {0}};
static const struct cli_opt attach_disk_opts[] = {
    {"bus", true, false, 0}, {"format", true, false, 0}, {"cache", true, false, 0}, {"serial", true, false, 0},
    {"readonly", false, false, 0}, {"persistent", false, false, 0}, {"volume", true, false, 0}, {0}};
static const struct cli_opt attach_nic_opts[] = {
    {"network", true, false, 0}, {"bridge", true, false, 0}, {"direct", true, false, 0}, {"user", false, false, 0},
    {"mac", true, false, 0}, {"model", true, false, 0}, {"mode", true, false, 0}, {"queues", true, false, 0},
    {"filter", true, false, 0}, {"vlan", true, false, 0}, {"persistent", false, false, 0}, {0}};
static const struct cli_opt block_pull_opts[] = {
    {"base", true, false, 0}, {"bandwidth", true, false, 0}, {"wait", false, false, 0}, {0}};
static const struct cli_opt block_commit_opts[] = {
    {"base", true, false, 0}, {"top", true, false, 0}, {"bandwidth", true, false, 0}, {"wait", false, false, 0}, {0}};
static const struct cli_opt block_copy_opts[] = {
    {"dest", true, false, 0}, {"volume", true, false, 0}, {"format", true, false, 0}, {"bandwidth", true, false, 0},
    {"pivot", false, false, 0}, {"finish", false, false, 0}, {"wait", false, false, 0}, {0}};
static const struct cli_opt block_job_opts[] = {
    {"abort", false, false, 0}, {"pivot", false, false, 0}, {"finish", false, false, 0}, {"wait", false, false, 0}, {0}};
static const struct cli_opt snapshot_create_opts[] = {
    {"disk-only", false, false, 0}, {"quiesce", false, false, 0}, {"description", true, false, 0}, {0}};
static const struct cli_opt snapshot_list_opts[] = {{"tree", false, false, 0}, {0}};
static const struct cli_opt snapshot_delete_opts[] = {{"bandwidth", true, false, 0}, {0}};
static const struct cli_opt snapshot_revert_opts[] = {
    {"running", false, false, 0}, {"paused", false, false, 0}, {"wait-timeout", true, false, 0}, {0}};
static const struct cli_opt media_opts[] = {
    {"eject", false, false, 0}, {"config", false, false, 0}, {"persistent", false, false, 0}, {0}};
static const struct cli_opt autostart_opts[] = {{"disable", false, false, 0}, {"run", false, false, 0}, {0}};
static const struct cli_opt disable_opts[] = {{"disable", false, false, 0}, {0}};
static const struct cli_opt shutdown_all_opts[] = {{"timeout", true, false, 't'}, {"save", false, false, 0}, {0}};
static const struct cli_opt detach_opts[] = {{"persistent", false, false, 0}, {"mac", true, false, 0}, {0}};
static const struct cli_opt setvcpus_opts[] = {{"config", false, false, 0}, {"live", false, false, 0}, {0}};
static const struct cli_opt hostdev_opts[] = {
    {"pci", true, false, 0}, {"usb", true, false, 0}, {"persistent", false, false, 0}, {"config", false, false, 0}, {0}};

static int cmd_help(struct cli *c);

static const struct cli_command commands[] = {
    {"define", cmd_define, define_opts, 1, 1, "define FILE.json | define NAME [--memory 1G --cpus 2 --disk file=PATH|vol=POOL/NAME|size=20G[,bus=...] "
     "--kernel K --initrd I --append A --nic user --share DIR[:TAG[:ro]] --cloud-init USER-DATA [--meta-data F] "
     "--credential NAME=VALUE|NAME=@FILE ...]", "define a VM from a JSON file or from flags"},
    {"undefine", cmd_undefine, undefine_opts, 1, 1,
     "undefine NAME [--remove-storage] [--keep-nvram] [--keep-tpm] [--snapshots-metadata] [--managed-save]",
     "remove a VM's definition and its UEFI variable store (--remove-storage: its volumes too; a VM with "
     "snapshots needs --snapshots-metadata, one with a managed save --managed-save)"},
    {"save", cmd_save, save_opts, 1, 2, "save NAME FILE [--bypass-cache] | save NAME --abort",
     "save the guest's memory and device state to FILE and shut the VM off (a failed save leaves it running)"},
    {"restore", cmd_restore, restore_opts, 1, 1, "restore FILE [--paused] [--wait-timeout SECONDS]",
     "start a VM from a state saved by qvisor save (its definition must still match)"},
    {"managedsave", cmd_managedsave, managedsave_opts, 1, 1, "managedsave NAME [--bypass-cache]",
     "save the VM's state where qvisor keeps it and shut it off; the next start resumes from it"},
    {"migrate", cmd_migrate, migrate_opts, 1, 1,
     "migrate NAME --to tcp:HOST:PORT --token T|ssh://[USER@]HOST[:PORT] [--copy-storage|--postcopy "
     "[--postcopy-bandwidth MiB/s]] [--bandwidth MiB/s] "
     "[--max-downtime MS] [--auto-converge] [--undefine-source] [--tls DIR] [--persistent] [--remote-qvisor PATH] "
     "[--remote-root DIR] [--ssh-config FILE] [--wait-timeout SECONDS] [--unsafe] | migrate NAME --abort",
     "move a running VM live to the qvisor migrate-incoming waiting on another host (disks on shared storage, or "
     "local ones copied with --copy-storage); "
     "a failure leaves it running here"},
    {"evacuate", cmd_evacuate, evacuate_opts, 0, 0,
     "evacuate --to ssh://[USER@]HOST[:PORT]|tcp:HOST:PORT [--parallel N] [migrate's options]",
     "migrate every running VM of this host away, N at a time, each reported; with tcp:HOST:PORT the VMs go in name "
     "order to PORT, PORT+1, ... (each waiting with the --token T given here)"},
    {"migrate-incoming", cmd_migrate_incoming, migrate_in_opts, 1, 1,
     "migrate-incoming NAME --listen ADDR:PORT [--copy-storage|--postcopy] [--definition FILE.json|- [--persistent]] "
     "[--tls DIR] [--token T] [--timeout SECONDS] [--wait-timeout SECONDS] | migrate-incoming NAME --cancel",
     "on the destination: start NAME's QEMU waiting for its migration stream (the VM defined here, or from FILE: "
     "transient, or defined with --persistent), for the source showing the token it prints, at most --timeout "
     "(300 s)"},
    {"managedsave-remove", cmd_managedsave_remove, no_opts, 1, 1, "managedsave-remove NAME",
     "forget the VM's managed save: the next start boots"},
    {"clone", cmd_clone, clone_opts, 2, 2, "clone VM NEW [--linked]",
     "a new VM from a shut-off one: new uuid and MACs, its disks copied (--linked: copy-on-write overlays)"},
    {"edit", cmd_edit, no_opts, 1, 1, "edit NAME   (or: qvisor edit NAME < new.json)",
     "change a definition in $EDITOR; validated before it is written"},
    {"list", cmd_list, list_opts, 0, 0, "list [--all] [--json]", "list VMs (running ones; --all for every defined VM)"},
    {"show", cmd_show, show_opts, 1, 1, "show NAME [--json] [--confinement]",
     "print a VM's normalised definition (--confinement: what confines its running QEMU)"},
    {"argv", cmd_argv, no_opts, 1, 1, "argv NAME", "print the QEMU command line, one argument per line"},
    {"create", cmd_create, create_opts, 1, 1, "create FILE.json | create NAME [define's flags] [--wait-timeout SECONDS]",
     "start a transient VM: never defined, gone once it stops (virsh create)"},
    {"boot", cmd_boot, boot_opts, 0, 0,
     "boot --image DISK | --kernel K [--initrd I] [--append ARGS] [define's flags] [--expect REGEX]... "
     "[--fail REGEX]... [--exec CMD | --exec-file SCRIPT] [--timeout 300] [--name N] [--writable] "
     "[--keep-on-failure] [--prefix] [--junit FILE] [--tap] [--json] [-q]",
     "an ephemeral VM for CI: disks behind throw-away overlays, the console on stdout, patterns, the guest's "
     "exit code; exit 0 passed, 1 failed, 2 usage, 5 timed out"},
    {"start", cmd_start, start_opts, 1, 1, "start NAME [--paused] [--wait-timeout SECONDS]",
     "start a VM in the background; returns once the guest runs (--paused: once it is set up, paused)"},
    {"run", cmd_run, run_opts, 1, 1, "run NAME [--stop-timeout SECONDS]",
     "supervise a VM in the foreground (what a systemd unit runs); SIGTERM stops the guest: ACPI, then forced after "
     "--stop-timeout (default 60)"},
    {"stop", cmd_stop, stop_opts, 1, 1, "stop NAME [--timeout SECONDS] [--force] [--mode acpi|agent]",
     "ACPI power-off (--mode agent: guest-shutdown), then quit, SIGTERM and SIGKILL after the timeout (default 60 s)"},
    {"autostart", cmd_autostart, autostart_opts, 0, 1, "autostart VM [--disable] | autostart --run",
     "start the VM at boot (under systemd: its unit qvisor@VM enabled); --run starts every autostart network, "
     "then every autostart VM (for init scripts and qvisor-guests.service)"},
    {"shutdown-all", cmd_shutdown_all, shutdown_all_opts, 0, 0, "shutdown-all [--timeout SECONDS] [--save]",
     "stop every running VM in parallel: ACPI power-off, then forced after the timeout (default 60 s), or with "
     "--save managed-save them (autostart --run resumes them; one that cannot be saved is stopped); at host "
     "shutdown (qvisor-guests.service, init scripts)"},
    {"kill", cmd_kill, no_opts, 1, 1, "kill NAME", "stop a VM at once (SIGKILL to QEMU)"},
    {"reboot", cmd_simple, reboot_opts, 1, 1, "reboot NAME [--mode agent]",
     "reboot through the guest agent, else reset (--mode agent: the agent or fail)"},
    {"reset", cmd_simple, no_opts, 1, 1, "reset NAME", "hard reset"},
    {"pause", cmd_simple, no_opts, 1, 1, "pause NAME", "pause the vCPUs"},
    {"resume", cmd_simple, no_opts, 1, 1, "resume NAME", "resume the vCPUs"},
    {"status", cmd_status, no_opts, 1, 1, "status NAME [--json]", "state, pid, uptime, accel, last exit reason"},
    {"console", cmd_console, console_opts, 1, 1, "console NAME [--replay] [--idle SECONDS] [--expect TEXT [--timeout S]]",
     "attach to the serial console (Ctrl-] detaches); with a pipe, send stdin and print the answer"},
    {"qmp", cmd_qmp, no_opts, 2, 2, "qmp NAME '{\"execute\": ...}'", "pass one QMP command and print its reply"},
    {"hmp", cmd_hmp, no_opts, 2, 2, "hmp NAME 'info ...'", "run one human monitor command"},
    {"events", cmd_events, no_opts, 1, 1, "events NAME", "stream QMP events as JSON lines"},
    {"logs", cmd_logs, logs_opts, 1, 1, "logs NAME [-f] [-n LINES]",
     "supervisor events, QEMU's messages and the serial console, timestamped"},
    {"attach-disk", cmd_attach_disk, attach_disk_opts, 1, 2,
     "attach-disk NAME FILE|--volume POOL/NAME [--format F] [--cache C] [--serial S] [--readonly] [--persistent]",
     "hotplug a virtio disk (the image is opened by qvisor and passed as an fd)"},
    {"detach-disk", cmd_detach_disk, detach_opts, 2, 2, "detach-disk NAME FILE|ID|POOL/VOL [--persistent]",
     "unplug a hotplugged disk once the guest releases it"},
    {"attach-nic", cmd_attach_nic, attach_nic_opts, 1, 1,
     "attach-nic NAME --network N|--bridge B|--direct IF|--user [--mac M] [--model virtio] [--vlan ID] [--persistent]",
     "hotplug a NIC"},
    {"detach-nic", cmd_detach_nic, detach_opts, 1, 1, "detach-nic NAME --mac MAC [--persistent]", "unplug a NIC"},
    {"attach-device", cmd_attach_device, hostdev_opts, 1, 2,
     "attach-device NAME FILE|--pci ADDRESS|--usb VENDOR:PRODUCT|BUS.DEVICE [--persistent|--config]",
     "hotplug a host device (FILE: a \"hostdevs\" entry as JSON); --persistent also defines it, --config only "
     "defines it"},
    {"detach-device", cmd_detach_device, hostdev_opts, 1, 2,
     "detach-device NAME FILE|--pci ADDRESS|--usb VENDOR:PRODUCT|BUS.DEVICE [--persistent|--config]",
     "unplug a hotplugged host device; --persistent also removes it from the definition, --config only there"},
    {"change-media", cmd_change_media, media_opts, 2, 3, "change-media NAME DEV FILE|--eject [--config]",
     "put another medium (an ISO, read-only) into a CD-ROM drive (DEV: cdrom0 or the file it holds), or eject it; "
     "a running VM's drive changes now, --config changes the definition too"},
    {"ifaddr", cmd_ifaddr, ifaddr_opts, 1, 1, "ifaddr NAME [--source lease|agent] [--json]",
     "each NIC's MAC, tap, network and address (--source agent: as the guest sees them)"},
    {"exec", cmd_exec, exec_opts, 2, 4096,
     "exec NAME [--timeout S] [--env K=V]... [--stdin FILE|-] -- CMD [ARGS...]",
     "run a command in the guest (agent); prints its output, exits with its status (5: timed out)"},
    {"cp", cmd_cp, no_opts, 2, 2, "cp SRC DST   (one of them VM:/path)", "copy a file into or out of the guest (agent)"},
    {"agent", cmd_agent, no_opts, 2, 3,
     "agent NAME ping|info|time-sync|fsfreeze|fsthaw|fsfreeze-status|set-password USER",
     "guest agent commands (set-password reads the password from stdin)"},
    {"disk-resize", cmd_disk_resize, resize_opts, 3, 3, "disk-resize NAME DISK SIZE|+SIZE [--allow-shrink]",
     "resize a running VM's disk (DISK: disk0, the image path or its serial); the guest sees it at once"},
    {"blkstat", cmd_blkstat, no_opts, 1, 2, "blkstat NAME [DISK] [--json]",
     "I/O statistics of a running VM's disks: requests, bytes, flushes, time"},
    {"setmem", cmd_setmem, no_opts, 2, 2, "setmem NAME SIZE",
     "set a running VM's balloon target (memory.balloon; at most memory.size): the guest gives memory back"},
    {"setvcpus", cmd_setvcpus, setvcpus_opts, 2, 2, "setvcpus NAME COUNT [--config [--live]]",
     "plug or unplug vCPUs of a running VM, between cpu.count and cpu.max; --config sets cpu.count in the "
     "definition instead (with --live: as well)"},
    {"display", cmd_display, no_opts, 1, 1, "display NAME [--json]",
     "where to connect to a running VM's display (vnc://HOST:PORT), like virsh domdisplay"},
    {"stats", cmd_stats, stats_opts, 0, 64, "stats [NAME...] [--json|--prometheus]",
     "CPU, vCPU, memory, disk and NIC statistics of VMs (all defined ones without NAME), like virsh domstats"},
    {"block pull", cmd_block_pull, block_pull_opts, 2, 2, "block pull VM DISK [--base FILE] [--wait] [--bandwidth 50M]",
     "copy the layers below a running disk's image into it (all, or those above --base): they leave its chain"},
    {"block commit", cmd_block_commit, block_commit_opts, 2, 2,
     "block commit VM DISK [--top FILE] [--base FILE] [--wait] [--bandwidth 50M]",
     "merge layers of a running disk's chain down into --base (default: the bottom); without --top the disk's "
     "own image is merged and the disk switches to the base"},
    {"block copy", cmd_block_copy, block_copy_opts, 2, 2,
     "block copy VM DISK --dest FILE|--volume POOL/NAME [--format qcow2|raw] [--pivot|--finish] [--wait] "
     "[--bandwidth 50M]",
     "copy a running disk into a new file or volume; --pivot moves the disk onto it (the definition follows), "
     "--finish keeps a complete copy"},
    {"block job", cmd_block_job, block_job_opts, 2, 2, "block job VM DISK [--abort|--pivot|--finish] [--wait]",
     "a running block job: its progress, or abort it, switch over to the copy, or finish it without switching"},
    {"net define", cmd_net_define, net_define_opts, 1, 1,
     "net define FILE.json | net define NAME [--mode nat --ipv4 10.77.5.1/24 --dhcp START,END --domain D "
     "--forward tcp:8080:10.77.5.10:80 --bridge BR --mtu N --autostart]", "define a network"},
    {"net undefine", cmd_net_undefine, no_opts, 1, 1, "net undefine NAME", "remove a network's definition"},
    {"net list", cmd_net_list, no_opts, 0, 0, "net list [--json]", "list networks"},
    {"net show", cmd_net_show, no_opts, 1, 1, "net show NAME", "print a network's normalised definition"},
    {"net start", cmd_net_start, start_opts, 1, 1, "net start NAME", "start a network in the background"},
    {"net run", cmd_net_run, run_opts, 1, 1, "net run NAME", "run a network in the foreground (what a unit runs)"},
    {"net stop", cmd_net_stop, no_opts, 1, 1, "net stop NAME", "remove the network's bridge, rules and dnsmasq"},
    {"net leases", cmd_net_leases, no_opts, 1, 1, "net leases NAME [--json]", "the network's DHCP leases"},
    {"net autostart", cmd_net_autostart, disable_opts, 1, 1, "net autostart NAME [--disable]",
     "start the network at boot (under systemd: its unit qvisor-net@NAME enabled) and whenever a VM needs it"},
    {"net gc", cmd_net_gc, no_opts, 0, 0, "net gc", "remove qvisor taps, rules and dnsmasq left without an owner"},
    {"net edit", cmd_net_edit, no_opts, 1, 1, "net edit NAME",
     "edit a network's definition with $EDITOR (or JSON on stdin); a running network takes new hosts and forwards "
     "at once and says what waits for its restart"},
    {"net update", cmd_net_update, net_update_opts, 3, 3,
     "net update NAME add|delete host --mac MAC [--ip IP] [--name HOST] | net update NAME add|delete forward "
     "--host-port N [--protocol tcp|udp] [--guest IP --guest-port N] [--live] [--config]",
     "add or delete a static DHCP host or a port forward: in the definition and, when it runs, the running network "
     "(dnsmasq keeps its leases); --live or --config for one of them"},
    {"filter define", cmd_filter_define, filter_define_opts, 0, 1,
     "filter define FILE.json | filter define --name NAME [--rule DIRECTION:PROTOCOL[:MATCH]:ACTION ...]",
     "define (or replace) a named NIC filter: clean-traffic plus rules (in:tcp:80:accept, out:tcp:25:drop, "
     "in:icmp:type=echo-request,source=10.0.0.0/8:accept; MATCH: ports or ports=, type=, source=, destination= "
     "joined by commas); NICs use it as \"filter\": \"NAME\""},
    {"filter list", cmd_filter_list, no_opts, 0, 0, "filter list [--json]", "list NIC filters, the built-in ones too"},
    {"filter show", cmd_filter_show, no_opts, 1, 1, "filter show NAME", "print a NIC filter"},
    {"filter undefine", cmd_filter_undefine, no_opts, 1, 1, "filter undefine NAME",
     "remove a NIC filter (refused while a VM's NIC uses it)"},
    {"secret define", cmd_secret_define, secret_define_opts, 1, 1,
     "secret define NAME [--usage ceph:client.libvirt] [--description TEXT]",
     "define a secret (or update its usage/description); its value is set apart"},
    {"secret set-value", cmd_secret_set_value, secret_set_opts, 1, 1, "secret set-value NAME [--file FILE] < VALUE",
     "set a secret's value from standard input or a file (never from the command line)"},
    {"secret list", cmd_secret_list, no_opts, 0, 0, "secret list [--json]", "list secrets (never their values)"},
    {"secret show", cmd_secret_show, no_opts, 1, 1, "secret show NAME",
     "a secret's uuid, usage, whether it has a value and who uses it (JSON; never the value)"},
    {"secret undefine", cmd_secret_undefine, no_opts, 1, 1, "secret undefine NAME",
     "remove a secret and its value (refused while a running VM uses it)"},
    {"pool define", cmd_pool_define, pool_define_opts, 0, 1,
     "pool define FILE.json | pool define --name N [--type dir] --path DIR | pool define --name N --type rbd "
     "--pool CEPHPOOL --monitor HOST[:PORT]... [--user ID] [--secret NAME] [--ceph-conf PATH]",
     "define a storage pool (a dir pool's directory is created; an rbd pool's cluster is asked first)"},
    {"pool undefine", cmd_pool_undefine, no_opts, 1, 1, "pool undefine NAME",
     "remove a pool's definition (its volumes stay; refused while VMs use them)"},
    {"pool list", cmd_pool_list, no_opts, 0, 0, "pool list [--json]", "list pools: capacity, allocation, available"},
    {"pool show", cmd_pool_show, pool_show_opts, 1, 1, "pool show NAME [--addresses]",
     "a pool's definition and sizes (JSON); --addresses: an rbd pool's Ceph monitors and OSDs"},
    {"pool refresh", cmd_pool_refresh, no_opts, 1, 1, "pool refresh NAME",
     "rescan a pool, dropping what interrupted copies left behind"},
    {"vol create", cmd_vol_create, vol_create_opts, 1, 1,
     "vol create POOL/NAME --size 10G [--format qcow2|raw] [--backing POOL/VOL|FILE] "
     "[--preallocation off|metadata|full]", "create a volume (qcow2 by default; --backing: a copy-on-write overlay)"},
    {"vol list", cmd_vol_list, no_opts, 1, 1, "vol list POOL [--json]", "list a pool's volumes"},
    {"vol info", cmd_vol_info, no_opts, 1, 1, "vol info POOL/NAME [--json]",
     "format, sizes, the whole backing chain, the VMs using it and the volumes built on it"},
    {"vol resize", cmd_vol_resize, vol_resize_opts, 2, 2, "vol resize POOL/NAME SIZE|+SIZE [--allow-shrink] [--force]",
     "grow a volume (shrinking needs --allow-shrink, and --force while a VM uses it)"},
    {"vol delete", cmd_vol_delete, vol_delete_opts, 1, 1, "vol delete POOL/NAME [--force] [--delete-snapshots]",
     "delete a volume (refused while VMs use it unless --force; always while volumes are built on it; an rbd "
     "volume's snapshots only with --delete-snapshots)"},
    {"vol clone", cmd_vol_clone, vol_clone_opts, 2, 2,
     "vol clone POOL/VOL NEWNAME [--pool P] [--format qcow2|raw] [--from-snapshot SNAP]",
     "a full, standalone copy of a volume (its whole chain), also into another pool; rbd --from-snapshot: a "
     "copy-on-write clone of that snapshot (made and protected as needed)"},
    {"vol import", cmd_vol_import, format_opts, 2, 2, "vol import POOL/NAME FILE [--format qcow2|raw]",
     "copy an image file (a downloaded cloud image) into a new volume, converted (qcow2 by default)"},
    {"vol export", cmd_vol_export, format_opts, 2, 2, "vol export POOL/NAME FILE|- [--format qcow2|raw]",
     "copy a volume out to a new file, or as raw bytes to stdout"},
    {"snapshot create", cmd_snapshot_create, snapshot_create_opts, 2, 2,
     "snapshot create VM NAME [--disk-only [--quiesce]] [--description TEXT]",
     "snapshot a VM: its disks (qcow2) and, while it runs, its memory; --disk-only: external qcow2 overlays (a "
     "running guest's filesystems frozen through its agent when it answers; --quiesce: or fail)"},
    {"snapshot list", cmd_snapshot_list, snapshot_list_opts, 1, 1, "snapshot list VM [--tree] [--json]",
     "a VM's snapshots: when, state, kind, parent (the current one marked)"},
    {"snapshot show", cmd_snapshot_show, no_opts, 2, 2, "snapshot show VM NAME [--json]",
     "one snapshot: parent, children, state, kind, description, disks and their files"},
    {"snapshot current", cmd_snapshot_current, no_opts, 1, 1, "snapshot current VM [--json]",
     "the snapshot the VM was last taken or reverted to"},
    {"snapshot revert", cmd_snapshot_revert, snapshot_revert_opts, 2, 2,
     "snapshot revert VM NAME [--running|--paused] [--wait-timeout SECONDS]",
     "bring the disks and, for a full snapshot, the guest's memory back to a snapshot (a shut-off VM starts from "
     "it); the VM ends as it was then, or running/paused as asked"},
    {"snapshot delete", cmd_snapshot_delete, snapshot_delete_opts, 2, 2, "snapshot delete VM NAME [--bandwidth 50M]",
     "delete a snapshot (a disk-only one is merged into the image below its overlay; --bandwidth caps a running "
     "VM's merge)"},
    {"host-check", cmd_host_check, no_opts, 0, 0, "host-check [--json]",
     "KVM, vhost-net, tun, nftables, QEMU and what the sandbox can apply on this host"},
    {"help", cmd_help, no_opts, 0, 1, "help [COMMAND]", "show usage"},
    {0},
};

static const struct cli_command *find_command(const char *name)
{
    for (const struct cli_command *cmd = commands; cmd->name; cmd++)
        if (strcmp(cmd->name, name) == 0)
            return cmd;
    return NULL;
}

static void usage_all(FILE *out)
{
    fprintf(out, "usage: qvisor [--root DIR] [--json] [-q] COMMAND [ARGS...]\n\n");
    for (const struct cli_command *cmd = commands; cmd->name; cmd++)
        fprintf(out, "  %-16s %s\n", cmd->name, cmd->summary);
    fprintf(out, "\nExit codes: 0 ok, 1 failed, 2 usage or invalid definition, 3 no such object, "
                 "4 conflict, 5 timed out.\n");
}

static int cmd_help(struct cli *c)
{
    const struct cli_command *cmd = c->npos ? find_command(c->pos[0]) : NULL;
    if (c->npos && !cmd)
        return qv_fail(&c->err, -EINVAL, "no command named %s", c->pos[0]);
    if (cmd)
        printf("usage: qvisor %s\n  %s\n", cmd->usage, cmd->summary);
    else
        usage_all(stdout);
    return 0;
}

const char *cli_opt(const struct cli *c, const char *name)
{
    const char *v = NULL;
    for (size_t i = 0; i < c->nopts; i++)
        if (strcmp(c->opts[i].opt->name, name) == 0)
            v = c->opts[i].value ? c->opts[i].value : "";
    return v;
}

bool cli_flag(const struct cli *c, const char *name)
{
    return cli_opt(c, name) != NULL;
}

int cli_opt_seconds_ms(struct cli *c, const char *name, int dflt, int *out)
{
    const char *v = cli_opt(c, name);
    if (!v) {
        *out = dflt;
        return 0;
    }
    char *end;
    double s = strtod(v, &end);
    if (end == v || *end || s < 0 || s > 86400)
        return qv_fail(&c->err, -EINVAL, "--%s %s: not a number of seconds", name, v);
    *out = (int)(s * 1000);
    return 0;
}

void cli_print_json(json_object *o)
{
    _cleanup_free_ char *s = json_pretty(o);
    fputs(s, stdout);
}

/* Global options; returns 1 if argv[*i] was one (consuming its value), 0 if not,
 * <0 on error. */
static int global_option(struct cli *c, int argc, char **argv, int *i, const char **root)
{
    const char *a = argv[*i];
    if (strcmp(a, "--json") == 0) {
        c->json = true;
        return 1;
    }
    if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
        c->quiet = true;
        return 1;
    }
    if (str_startswith(a, "--root=")) {
        *root = a + 7;
        return 1;
    }
    if (strcmp(a, "--root") == 0) {
        if (*i + 1 >= argc)
            return qv_fail(&c->err, -EINVAL, "--root needs a directory");
        *root = argv[++*i];
        return 1;
    }
    return 0;
}

static int parse_command_args(struct cli *c, int argc, char **argv, int start, const char **root)
{
    const struct cli_command *cmd = c->cmd;
    c->pos = qv_xcalloc((size_t)argc + 1, sizeof(char *));
    bool only_pos = false;
    for (int i = start; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || strcmp(a, "-") == 0) {
            c->pos[c->npos++] = argv[i];
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_pos = true;
            continue;
        }
        int g = global_option(c, argc, argv, &i, root);
        if (g < 0)
            return g;
        if (g)
            continue;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            printf("usage: qvisor %s\n  %s\n", cmd->usage, cmd->summary);
            exit(0);
        }
        bool is_long = a[1] == '-';
        const char *name = a + (is_long ? 2 : 1);
        const char *eq = is_long ? strchr(name, '=') : NULL;
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct cli_opt *o = NULL;
        for (const struct cli_opt *k = cmd->opts; k->name; k++)
            if (is_long ? strlen(k->name) == nlen && strncmp(k->name, name, nlen) == 0
                        : nlen == 1 && k->short_name == name[0])
                o = k;
        if (!o)
            return qv_fail(&c->err, -EINVAL, "%s: unknown option %s (usage: qvisor %s)", cmd->name, a, cmd->usage);
        const char *value = NULL;
        if (o->has_arg) {
            if (eq)
                value = eq + 1;
            else if (i + 1 < argc)
                value = argv[++i];
            else
                return qv_fail(&c->err, -EINVAL, "%s: --%s needs a value", cmd->name, o->name);
        } else if (eq) {
            return qv_fail(&c->err, -EINVAL, "%s: --%s takes no value", cmd->name, o->name);
        }
        if (!o->repeat && cli_opt(c, o->name))
            return qv_fail(&c->err, -EINVAL, "%s: --%s given twice", cmd->name, o->name);
        if (c->nopts >= CLI_MAX_OPTS)
            return qv_fail(&c->err, -EINVAL, "%s: too many options", cmd->name);
        c->opts[c->nopts].opt = o;
        c->opts[c->nopts].value = value;
        c->nopts++;
    }
    if (c->npos < cmd->min_pos || c->npos > cmd->max_pos)
        return qv_fail(&c->err, -EINVAL, "usage: qvisor %s", cmd->usage);
    return 0;
}

static int run(struct cli *c, int argc, char **argv)
{
    const char *root = getenv("QVISOR_ROOT");
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage_all(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("qvisor %s\n", QVISOR_VERSION);
            return 0;
        }
        int g = global_option(c, argc, argv, &i, &root);
        if (g < 0)
            return g;
        if (!g)
            return qv_fail(&c->err, -EINVAL, "unknown option %s (qvisor help lists the commands)", argv[i]);
    }
    if (i >= argc) {
        usage_all(stderr);
        return -EINVAL;
    }
    char word[64];
    snprintf(word, sizeof(word), "%s", argv[i]);
    /* two-word verbs: "net start", "pool list", "vol create" */
    static const struct {
        const char *family, *which;
    } families[] = {
        {"net", "define, undefine, list, show, edit, update, start, run, stop, leases, autostart, gc"},
        {"filter", "define, list, show, undefine"},
        {"secret", "define, set-value, list, show, undefine"},
        {"pool", "define, undefine, list, show, refresh"},
        {"vol", "create, list, info, resize, delete, clone, import, export"},
        {"block", "pull, commit, copy, job"},
        {"snapshot", "create, list, show, current, revert, delete"},
    };
    for (size_t f = 0; f < ARRAY_SIZE(families); f++) {
        if (strcmp(argv[i], families[f].family) != 0)
            continue;
        if (i + 1 >= argc)
            return qv_fail(&c->err, -EINVAL, "%s: which? %s", families[f].family, families[f].which);
        snprintf(word, sizeof(word), "%s %s", families[f].family, argv[++i]);
    }
    c->cmd = find_command(word);
    if (!c->cmd)
        return qv_fail(&c->err, -EINVAL, "no command named %s (qvisor help lists them)", word);
    int r = parse_command_args(c, argc, argv, i + 1, &root);
    if (r < 0)
        return r;
    r = qv_paths_init(&c->paths, root, &c->err);
    if (r < 0)
        return r;
    return c->cmd->run(c);
}

int qvisor_main(int argc, char **argv)
{
    const char *base = argc > 0 ? strrchr(argv[0], '/') : NULL;
    if (argc > 0 && strcmp(base ? base + 1 : argv[0], "qvisor-generator") == 0)
        return qvisor_generator(argc, argv);
    struct cli c = {0};
    int r = run(&c, argc, argv);
    free(c.pos);
    if (r < 0) {
        if (c.err.msg[0])
            fprintf(stderr, "qvisor: %s\n", c.err.msg);
        return qv_exit_code(r);
    }
    return r;
}
