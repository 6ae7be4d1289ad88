# qvisor — `make` builds ./qvisor, `make check` runs every test, `make demo` boots a guest.
# `make check` and `make demo` first install whatever Debian packages are missing.

PREFIX  ?= /usr/local
BUILD   ?= build
CC      ?= cc
AR      ?= ar
CFLAGS  ?= -O2 -g
JOBS    ?= $(shell nproc)
PKGS    := json-c libnl-3.0 libnl-route-3.0 libnftables libcap-ng libseccomp
# netsetup loads these on first use (netsetup/dl.h): their headers, not their libraries
PKGS_DLOPEN := libnl-3.0 libnl-route-3.0 libnftables
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(filter-out $(PKGS_DLOPEN),$(PKGS)) 2>/dev/null)
WARN    := -std=c17 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-format-truncation
CPPFLAGS += -I. $(PKG_CFLAGS)
LDLIBS  := $(PKG_LIBS) -ldl
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
FUZZ_CC ?= clang
# clang warns about libseccomp's own macros where gcc does not, and calls a variable that
# only holds a cleanup-attribute reference unused (the gcc build keeps -Wunused-variable)
ASAN_FLAGS := $(SAN) -fsanitize=fuzzer-no-link -Wno-unknown-warning-option -Wno-missing-field-initializers \
              -Wno-unused-variable
# clang's ASan resolves the real __cxa_throw when the program starts: libstdc++ must be
# loaded then, or the first C++ exception inside librados (dlopened later) aborts in
# its interceptor ("real___cxa_throw != 0"). gcc's ASan looks it up lazily.
# -no-pie: as a PIE, the ASan build with coverage hooks carries ~98,000 relative
# relocations (pc tables, globals' descriptors) applied at every start: ~1300 page
# faults and ~45 ms of CPU per qvisor call against ~890 and ~35 ms, in a suite that
# makes thousands of calls.
ASAN_LDFLAGS := -no-pie -Wl,--push-state,--no-as-needed -lstdc++ -Wl,--pop-state
PLAIN_LDFLAGS :=

# `make V=1` shows whole command lines
ifeq ($(V),1)
Q :=
say = @true
else
Q := @
say = @printf '  %-6s %s\n'
endif

# The floors of DESIGN.md, highest first: that is also the static-link order, so an
# archive can only take symbols from the ones after it. scripts/check-layers says
# which floor may use which and fails the build on a wrong-way #include or symbol.
FLOORS   := launcher/cli launcher/supervisor launcher/model sandbox storage netsetup qmp common
MODULES  := $(FLOORS)
LIB_SRCS := $(filter-out launcher/cli/main.c,$(wildcard $(addsuffix /*.c,$(MODULES))))
TEST_SRCS := $(wildcard tests/unit/test_*.c)
TEST_HELPERS := $(filter-out $(TEST_SRCS),$(wildcard tests/unit/*.c))
TEST_PROGS := $(wildcard tests/progs/*.c)
LAYER_SRCS := $(wildcard $(addsuffix /*.c,$(FLOORS)) $(addsuffix /*.h,$(FLOORS)))

.PHONY: all check test-build demo deps install uninstall clean golden-update bench fuzz fuzz-build
all: qvisor

# $(1) = build folder, $(2) = floor: the floor's archive of its objects
define floor_lib
$(1)/lib/lib$(2).a: $$(patsubst %.c,$(1)/obj/%.o,$$(filter-out launcher/cli/main.c,$$(wildcard $(2)/*.c)))
	@mkdir -p $$(@D)
	@rm -f $$@
	$$(say) AR $$@
	$(Q)$$(AR) rcs $$@ $$^
endef

# One build variant: objects, one static archive per floor, the binary, the tests.
# $(1) = variable prefix, $(2) = build folder, $(3) = extra flags, $(4) = compiler
define variant
$(1)_OBJS := $$(patsubst %.c,$(2)/obj/%.o,$$(LIB_SRCS))
$(1)_LIBS := $$(patsubst %,$(2)/lib/lib%.a,$$(FLOORS))
$(1)_TESTS := $$(patsubst tests/unit/%.c,$(2)/tests/%,$$(TEST_SRCS))
$(1)_PROGS := $$(patsubst tests/progs/%.c,$(2)/progs/%,$$(TEST_PROGS))
$(2)/obj/%.o: %.c
	@mkdir -p $$(@D)
	$$(say) CC $$@
	$(Q)$(4) $$(WARN) $$(CPPFLAGS) $$(CFLAGS) $(3) -MMD -MP -c $$< -o $$@
$$(foreach f,$$(FLOORS),$$(eval $$(call floor_lib,$(2),$$(f))))
# every module in one archive, for programs that do not care about the floors
$(2)/libqvisor.a: $$($(1)_OBJS)
	@rm -f $$@
	$$(say) AR $$@
	$(Q)$$(AR) rcs $$@ $$^
$(2)/layers.ok: scripts/check-layers $$(LAYER_SRCS) $$($(1)_LIBS)
	$$(say) LAYERS $(2)/lib
	$(Q)scripts/check-layers $(2)/lib
	@touch $$@
$(2)/qvisor: $(2)/obj/launcher/cli/main.o $$($(1)_LIBS) | $(2)/layers.ok
	$$(say) LD $$@
	$(Q)$(4) $$(CFLAGS) $(3) -o $$@ $$^ $$(LDLIBS) $$($(1)_LDFLAGS)
# -MMD: a test also depends on every header and fake it includes (tests/fakes/*.c,
# tests/unit/*.h), not only on its own source
$(2)/tests/%: tests/unit/%.c $$(TEST_HELPERS) $$($(1)_LIBS)
	@mkdir -p $$(@D)
	$$(say) TEST $$@
	$(Q)$(4) $$(WARN) $$(CPPFLAGS) $$(CFLAGS) $(3) -MMD -MP -MF $$@.d -MT $$@ -o $$@ $$< $$(TEST_HELPERS) $$($(1)_LIBS) $$(LDLIBS) $$($(1)_LDFLAGS) -lcmocka -lpthread
$(2)/progs/%: tests/progs/%.c $$($(1)_LIBS)
	@mkdir -p $$(@D)
	$$(say) PROG $$@
	$(Q)$(4) $$(WARN) $$(CPPFLAGS) $$(CFLAGS) $(3) -MMD -MP -MF $$@.d -MT $$@ -o $$@ $$< $$($(1)_LIBS) $$(LDLIBS) $$($(1)_LDFLAGS) -lpthread
-include $$(patsubst %.o,%.d,$$($(1)_OBJS) $(2)/obj/launcher/cli/main.o)
-include $$(addsuffix .d,$$($(1)_TESTS) $$($(1)_PROGS))
endef
# The ASan+UBSan variant is built by clang with libFuzzer's coverage hooks, so that the
# fuzz harnesses link against its archive: one sanitizer build of the library, not two
# (gcc's ASan build beside clang's fuzz build cost a third of `make check`'s build).
ASAN_CC := $(FUZZ_CC)
$(eval $(call variant,PLAIN,$(BUILD),,$$(CC)))
$(eval $(call variant,ASAN,$(BUILD)/asan,$(ASAN_FLAGS),$$(ASAN_CC)))

# ---- fuzzing (libFuzzer, Debian's clang) -------------------------------------
# tests/fuzz/fuzz_NAME.c is one harness, tests/fuzz/corpus/NAME/ its seeds. A harness
# links the ASan variant's archive (clang, with coverage hooks, ASan and UBSan). `make fuzz FUZZ_SECONDS=N` runs
# each harness for N seconds and keeps what it learnt in $(BUILD)/fuzz/corpus;
# `make check` runs each for a few seconds (tests/integration/fuzz.sh).
FUZZ_SECONDS ?= 60
FUZZ_SRCS    := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS    := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRCS))
$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(BUILD)/asan/libqvisor.a
	@mkdir -p $(@D)
	$(say) FUZZ $@
	$(Q)$(ASAN_CC) $(WARN) $(CPPFLAGS) $(CFLAGS) $(ASAN_FLAGS) -fsanitize=fuzzer -MMD -MP -o $@ $< $(BUILD)/asan/libqvisor.a $(LDLIBS) $(ASAN_LDFLAGS)
-include $(addsuffix .d,$(FUZZ_BINS))
fuzz-build: $(FUZZ_BINS)
test-build: fuzz-build
fuzz: deps
	$(MAKE) fuzz-build
	tests/fuzz/run $(FUZZ_SECONDS) $(BUILD)/fuzz/corpus

# replaced by rename: running supervisors keep executing the old file
qvisor: $(BUILD)/qvisor
	@cp $< $@.tmp && mv -f $@.tmp $@

deps:
	@scripts/setup-deps

# Built in a sub-make so that flags from pkg-config are read after `deps` installed them.
# (the unit tests run in their ASan build only: tests/run never ran a plain one)
test-build:
	@$(MAKE) --no-print-directory qvisor $(BUILD)/asan/qvisor $(ASAN_TESTS) $(PLAIN_PROGS)

# the build runs on every core (CI calls plain `make check`): half the time on two
check: deps
	$(MAKE) -j$(JOBS) test-build
	tests/run

demo: deps
	$(MAKE) -j$(JOBS) qvisor
	scripts/demo

bench: deps
	$(MAKE) qvisor
	bench/run

# Rewrites tests/golden/*.argv from the current builder; review the diff before committing.
golden-update: test-build
	$(BUILD)/asan/tests/test_argv_golden --update

# `make install DESTDIR=/pkg PREFIX=/usr`; `make uninstall` with the same two removes it.
UNITS       := qvisor@.service qvisor-net@.service qvisor-guests.service
UNITDIR     := $(PREFIX)/lib/systemd/system
GENERATORDIR := $(PREFIX)/lib/systemd/system-generators
INSTALLED   := $(PREFIX)/bin/qvisor $(addprefix $(UNITDIR)/,$(UNITS)) $(GENERATORDIR)/qvisor-generator \
	$(PREFIX)/lib/tmpfiles.d/qvisor.conf $(PREFIX)/lib/sysusers.d/qvisor.conf
install: qvisor
	install -D -m 0755 qvisor $(DESTDIR)$(PREFIX)/bin/qvisor
	mkdir -p $(DESTDIR)$(UNITDIR) $(DESTDIR)$(GENERATORDIR)
	for u in $(UNITS); do \
		sed 's|@BINDIR@|$(PREFIX)/bin|g' units/$$u > $(DESTDIR)$(UNITDIR)/$$u.tmp && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$u.tmp && mv -f $(DESTDIR)$(UNITDIR)/$$u.tmp $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	# the generator is qvisor itself, called by that name (launcher/cli/units.c)
	ln -sfn $(PREFIX)/bin/qvisor $(DESTDIR)$(GENERATORDIR)/qvisor-generator
	install -D -m 0644 units/qvisor.tmpfiles $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/qvisor.conf
	install -D -m 0644 units/qvisor.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/qvisor.conf

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))

clean:
	rm -rf $(BUILD)/fuzz $(BUILD)/obj $(BUILD)/asan $(BUILD)/tests $(BUILD)/progs $(BUILD)/lib $(BUILD)/libqvisor.a \
		$(BUILD)/layers.ok $(BUILD)/qvisor qvisor
