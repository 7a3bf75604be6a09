/*
 * The allocator of the host's Lua VMs: size-class free lists over slabs.
 *
 * A request allocates and the collector frees a few dozen small objects (tables,
 * their node arrays, strings, closures); GET /api/projects about a thousand. With
 * glibc's malloc those went mostly through _int_malloc/_int_free (the collector
 * frees in bursts larger than the thread cache), about a sixth of a /ping's user
 * time. Lua tells the allocator the size of every block it frees or resizes
 * (lua_Alloc's osize), so small blocks need no header: a block of up to
 * HOST_LUA_HEAP_SMALL bytes comes from the free list of its 16-byte size class,
 * refilled from 64 KB slabs; larger ones go to malloc.
 *
 * A heap belongs to one lua_State, which one thread uses at a time (a generation
 * is built on one thread and handed to its worker through a mutex-protected queue),
 * so there is no locking. Freed small blocks stay on their free lists for reuse
 * by the same VM until the VM is closed (a reload or shutdown): a VM's small-object
 * memory is its peak, which the memory benchmark in BENCHMARKS.md includes.
 */
#ifndef HOST_LUA_HEAP_H
#define HOST_LUA_HEAP_H

#include <stddef.h>

#define HOST_LUA_HEAP_SMALL 512

typedef struct host_lua_heap host_lua_heap_t;

/** A new empty heap, or NULL when out of memory. */
host_lua_heap_t *host_lua_heap_new(void);

/** The lua_Alloc function; its ud is a host_lua_heap_t. */
void *host_lua_heap_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/** Frees the heap's slabs. Call after lua_close of the state that used it. */
void host_lua_heap_free(host_lua_heap_t *heap);

#endif
