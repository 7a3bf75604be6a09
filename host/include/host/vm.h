/*
 * Lua VM generations: a fresh lua_State with the host modules, the sandbox
 * prelude, and every script under scripts/ and lualib/ loaded. Building is
 * all-or-nothing: any error (syntax, a failing require, a missing entry point)
 * returns NULL with a "file:line: message" error and leaves nothing behind.
 */
#ifndef HOST_VM_H
#define HOST_VM_H

#include <stddef.h>

#include "host/worker.h"

/**
 * Builds a generation whose entry point is `require(module)[field]` (a function),
 * referenced by gen->handle_ref. Returns NULL and fills `err` on failure.
 */
host_gen_t *host_vm_build(const char *module, const char *field, char *err, size_t errlen);

/**
 * Calls the entry module's optional `start(worker_index)` on the worker's own
 * thread once the generation is current (at start-up and after each reload), so
 * scripts can start background coroutines (host.spawn) such as the task engine.
 * Errors are logged; they do not stop the worker.
 */
void host_vm_call_start(host_gen_t *gen, int worker_index);

/** Closes a generation's VM and frees it. */
void host_vm_close(host_gen_t *gen);

#endif
