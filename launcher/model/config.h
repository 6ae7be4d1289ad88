/* Internal to launcher/model: the parts of the definition parser in other files. */
#ifndef QV_CONFIG_H
#define QV_CONFIG_H

#include "launcher/model/model.h"

/* config.c's name tables, shared with config_json.c (the same names both ways) */
extern const char *const firmware_names[];
extern const char *const boot_dev_names[];
extern const char *const cache_names[];
extern const char *const aio_names[];
extern const char *const macvtap_names[];
extern const char *const console_names[];
extern const char *const graphics_names[];
extern const char *const poweroff_names[];
extern const char *const reboot_names[];
extern const char *const crash_names[];

/* config.c's checks, shared with the other parts */
bool ip_literal_valid(const char *s);
/* A string field that must satisfy `ok`; `what` describes the allowed form. */
int jr_checked_string(struct jr *r, json_object *o, const char *key, bool required, char **out,
                      bool (*ok)(const char *), const char *what);
int boot_index_get(struct jr *r, json_object *o, int *out);
/* A hotplugged device's JSON alone: r set up at KEY, an object, its text checked. */
int vm_device_json_begin(struct jr *r, json_object *o, const char *key, struct qv_err *e);
/* config_nic.c: one element of "nics" */
int vm_nic_parse(struct jr *r, json_object *o, struct vm_nic *n, const struct vm_def *d);

int vm_limits_parse(struct jr *r, json_object *root, struct vm_def *d);
int vm_sandbox_parse(struct jr *r, json_object *root, struct vm_def *d);
void vm_confine_to_json(const struct vm_def *d, json_object *o);
void vm_confine_free(struct vm_def *d);
/* config_fs.c: "filesystems" (virtiofs shares) */
int vm_filesystems_parse(struct jr *r, json_object *root, struct vm_def *d);
json_object *vm_filesystems_to_json(const struct vm_def *d);
void vm_filesystems_free(struct vm_def *d);
/* Each source exists and is a directory (at define and at start). */
int vm_filesystems_check_host(const struct vm_def *d, struct qv_err *e);

/* config_guestdata.c: "cloud_init" and "credentials" */
int vm_guestdata_parse(struct jr *r, json_object *root, struct vm_def *d);
/* Before the whole definition's text check, which would show a bad value. */
int vm_credentials_check_text(struct jr *r, json_object *root);
void vm_guestdata_to_json(const struct vm_def *d, json_object *o, bool with_values);
void vm_guestdata_free(struct vm_def *d);
/* The files exist and are regular files (store.c's check_host). */
int vm_guestdata_check_host(const struct vm_def *d, struct qv_err *e);

/* config_devices.c: "rng", "watchdog", "clock", and graphics' video and tablet */
extern const char *const video_names[];
extern const char *const watchdog_action_names[];
extern const char *const clock_offset_names[];
int vm_devices_parse(struct jr *r, json_object *root, struct vm_def *d);
int vm_video_parse(struct jr *r, json_object *graphics, struct vm_def *d);
void vm_devices_to_json(const struct vm_def *d, json_object *o);

/* config_passthrough.c: "tpm" and "hostdevs" */
int vm_passthrough_parse(struct jr *r, json_object *root, struct vm_def *d);
void vm_passthrough_to_json(const struct vm_def *d, json_object *o);
/* config_tuning.c: cpu.pinning, cpu.maxphysaddr, memory.hugepages, "numa" */
#define VM_MAX_VCPUS 288    /* config.c's limit on cpu.count */
extern const char *const physaddr_mode_names[];
/* Inside "cpu" (r is there), once cpu.count and cpu.model are known. */
int vm_cpu_tuning_parse(struct jr *r, json_object *cpu, struct vm_def *d);
/* Inside "memory" (r is there): hugepages' page size. */
int vm_hugepages_parse(struct jr *r, json_object *mem, struct vm_def *d);
/* Top-level "numa", once cpu and memory are parsed. */
int vm_numa_parse(struct jr *r, json_object *root, struct vm_def *d);
void vm_tuning_cpu_to_json(const struct vm_def *d, json_object *cpu);
void vm_tuning_to_json(const struct vm_def *d, json_object *o);
void vm_tuning_free(struct vm_def *d);

/* Kinds of file a path in a definition may name. */
#define PATH_REG 1u
#define PATH_BLK 2u
/* A path that exists must be of an allowed kind (a missing one is for the caller to
 * judge). Never opens it. -EINVAL naming the path and what it is. */
int vm_path_check_type(const char *path, unsigned allowed, struct qv_err *e);

#endif
