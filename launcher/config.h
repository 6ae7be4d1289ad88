/* Internal to launcher/: the parts of the definition parser in other files. */
#ifndef QV_CONFIG_H
#define QV_CONFIG_H

#include "launcher/launcher.h"

int vm_limits_parse(struct jr *r, json_object *root, struct vm_def *d);
int vm_sandbox_parse(struct jr *r, json_object *root, struct vm_def *d);
void vm_confine_to_json(const struct vm_def *d, json_object *o);
void vm_confine_free(struct vm_def *d);

#endif
