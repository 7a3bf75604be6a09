# aicode: C host (h2o + Lua 5.4) and its Lua scripts.
#   make run    install missing packages, build, serve on 127.0.0.1:8000
#   make test   install missing packages, build, run every test
#   make lint   luacheck + clang-format check

CC ?= gcc
PKGS := libh2o-evloop lua5.4 libjwt libcurl sqlite3 jansson libssl libcrypto
CFLAGS ?= -O2 -g
CFLAGS += -std=gnu11 -Wall -Wextra -Wshadow -Wmissing-declarations -Wno-unused-parameter \
          -DH2O_USE_LIBUV=0 -Ihost/include -Ibuild/gen -MMD -MP
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LDLIBS += $(PKG_LIBS) -lpthread -lm

HOST_SRCS := $(wildcard host/src/*.c)
HOST_OBJS := $(HOST_SRCS:host/src/%.c=build/obj/%.o)
# Modules that need no event loop, also built as a Lua C module for busted specs.
PURE_SRCS := host/src/common.c host/src/l_json.c host/src/l_jwt.c host/src/jwt_verify.c \
             host/src/l_sqlite.c host/src/log.c tests/support/spec_module.c
UNIT_TESTS := $(patsubst tests/unit/%.c,build/tests/%,$(wildcard tests/unit/test_*.c))

.PHONY: all deps deps-test agents run test test-unit test-spec test-e2e lint fmt bench clean

all: bin/aicode build/lua/host_core.so

deps:
	@tools/deps.sh build

deps-test:
	@tools/deps.sh test

build/gen/prelude.lua.h: host/lua/prelude.lua
	@mkdir -p $(@D)
	@{ echo '/* generated from host/lua/prelude.lua by make */'; \
	   echo 'static const char prelude_lua[] ='; \
	   sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $<; \
	   echo ';'; } > $@

build/obj/%.o: host/src/%.c build/gen/prelude.lua.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -c -o $@ $<

bin/aicode: $(HOST_OBJS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

build/lua/host_core.so: $(PURE_SRCS) $(wildcard host/include/host/*.h)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -fPIC -shared -o $@ $(PURE_SRCS) $(LDLIBS)

build/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h) $(filter-out build/obj/main.o,$(HOST_OBJS))
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -Wno-missing-declarations -o $@ $< \
	  $(filter-out build/obj/main.o,$(HOST_OBJS)) $(LDLIBS)

# The coding-agent CLIs at their pinned versions (tools/agents/package-lock.json).
agents:
	@tools/agents.sh

run: deps all
	./bin/aicode serve

test: deps-test all agents $(UNIT_TESTS)
	@tests/run.sh

test-unit: all $(UNIT_TESTS)
	@tests/run.sh unit

test-spec: all
	@tests/run.sh spec

test-e2e: all
	@tests/run.sh e2e

lint:
	luacheck -q lualib scripts spec
	clang-format --dry-run -Werror host/src/*.c host/include/host/*.h tests/unit/*.c tests/unit/*.h

fmt:
	clang-format -i host/src/*.c host/include/host/*.h tests/unit/*.c tests/unit/*.h

bench: all
	bench/run.sh

clean:
	rm -rf build bin

-include $(wildcard build/obj/*.d)
