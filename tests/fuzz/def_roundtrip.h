/* The body of a definition fuzzer: JSON text, then the parser and validator of one
 * kind of definition. An accepted definition must survive its own normal form:
 * from_json(to_json(d)) is accepted and serialises the same; a refusal has a message. */
#ifndef QV_FUZZ_DEF_ROUNDTRIP_H
#define QV_FUZZ_DEF_ROUNDTRIP_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DEF_ROUNDTRIP_FUZZER(type, from_json, to_json, free_def)                                                   \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)                                                  \
    {                                                                                                            \
        char *text = malloc(size + 1);                                                                           \
        memcpy(text, data, size);                                                                                \
        text[size] = '\0';                                                                                       \
        json_object *o = NULL;                                                                                   \
        struct qv_err e = {0};                                                                                   \
        if (json_parse_str("fuzz.json", text, &o, &e) == 0) {                                                    \
            type d;                                                                                              \
            if (from_json(o, &d, &e) == 0) {                                                                     \
                json_object *j1 = to_json(&d);                                                                   \
                type d2;                                                                                         \
                struct qv_err e2 = {0};                                                                          \
                if (from_json(j1, &d2, &e2) < 0) {                                                               \
                    fprintf(stderr, "normal form refused: %s\n%s\n", e2.msg, json_object_to_json_string(j1));    \
                    abort();                                                                                     \
                }                                                                                                \
                json_object *j2 = to_json(&d2);                                                                  \
                if (strcmp(json_object_to_json_string(j1), json_object_to_json_string(j2)) != 0) {               \
                    fprintf(stderr, "normal form not stable:\n%s\n%s\n", json_object_to_json_string(j1),          \
                            json_object_to_json_string(j2));                                                     \
                    abort();                                                                                     \
                }                                                                                                \
                json_object_put(j2);                                                                             \
                json_object_put(j1);                                                                             \
                free_def(&d2);                                                                                   \
                free_def(&d);                                                                                    \
            } else if (!e.msg[0]) {                                                                              \
                abort();                                                                                         \
            }                                                                                                    \
            json_object_put(o);                                                                                  \
        }                                                                                                        \
        free(text);                                                                                              \
        return 0;                                                                                                \
    }

#endif
