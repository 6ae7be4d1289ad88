/* libFuzzer: a pool definition as `pool define` reads it (tests/fuzz/def_roundtrip.h). */
#include "launcher/model/storedef.h"
#include "tests/fuzz/def_roundtrip.h"

DEF_ROUNDTRIP_FUZZER(struct pool_def, pool_def_from_json, pool_def_to_json, pool_def_free)
