/* libFuzzer: a network definition as `net define` reads it (tests/fuzz/def_roundtrip.h). */
#include "launcher/model/netdef.h"
#include "tests/fuzz/def_roundtrip.h"

DEF_ROUNDTRIP_FUZZER(struct net_def, net_def_from_json, net_def_to_json, net_def_free)
