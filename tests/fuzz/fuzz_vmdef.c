/* libFuzzer: a VM definition as `define` reads it (tests/fuzz/def_roundtrip.h). */
#include "launcher/model/model.h"
#include "tests/fuzz/def_roundtrip.h"

DEF_ROUNDTRIP_FUZZER(struct vm_def, vm_def_from_json, vm_def_to_json, vm_def_free)
