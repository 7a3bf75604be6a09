/* Size-class allocator for Lua VMs: see host/lua_heap.h. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "host/lua_heap.h"

#define GRAIN 16 /* >= Lua's maximum alignment (LUAI_MAXALIGN), and malloc's */
#define NCLASSES (HOST_LUA_HEAP_SMALL / GRAIN)
#define SLAB_BYTES (64 * 1024)

typedef struct free_block {
    struct free_block *next;
} free_block_t;

typedef struct slab {
    struct slab *next;
    /* blocks follow, GRAIN-aligned */
} slab_t;

struct host_lua_heap {
    free_block_t *free[NCLASSES]; /* free[c]: blocks of (c + 1) * GRAIN bytes */
    char *bump, *bump_end;        /* the unused tail of the newest slab */
    slab_t *slabs;
};

/* Class of a small size (1..HOST_LUA_HEAP_SMALL). */
static inline size_t class_of(size_t size)
{
    return (size - 1) / GRAIN;
}

host_lua_heap_t *host_lua_heap_new(void)
{
    return calloc(1, sizeof(host_lua_heap_t));
}

static void *small_alloc(host_lua_heap_t *h, size_t size)
{
    size_t c = class_of(size);
    free_block_t *b = h->free[c];
    if (b != NULL) {
        h->free[c] = b->next;
        return b;
    }
    size_t bytes = (c + 1) * GRAIN;
    if ((size_t)(h->bump_end - h->bump) < bytes) {
        /* The rest of the old slab (under one block) is left unused. */
        slab_t *s = malloc(SLAB_BYTES);
        if (s == NULL)
            return NULL;
        s->next = h->slabs;
        h->slabs = s;
        h->bump = (char *)s + ((sizeof(slab_t) + GRAIN - 1) / GRAIN) * GRAIN;
        h->bump_end = (char *)s + SLAB_BYTES;
    }
    void *p = h->bump;
    h->bump += bytes;
    return p;
}

static inline void small_free(host_lua_heap_t *h, void *p, size_t size)
{
    free_block_t *b = p;
    size_t c = class_of(size);
    b->next = h->free[c];
    h->free[c] = b;
}

void *host_lua_heap_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    host_lua_heap_t *h = ud;
    if (ptr == NULL) /* osize is then a type tag, not a size */
        return nsize == 0                     ? NULL
               : nsize <= HOST_LUA_HEAP_SMALL ? small_alloc(h, nsize)
                                              : malloc(nsize);
    int was_small = osize <= HOST_LUA_HEAP_SMALL;
    if (nsize == 0) {
        if (was_small)
            small_free(h, ptr, osize);
        else
            free(ptr);
        return NULL;
    }
    if (!was_small && nsize > HOST_LUA_HEAP_SMALL)
        return realloc(ptr, nsize);
    if (was_small && nsize <= HOST_LUA_HEAP_SMALL && class_of(osize) == class_of(nsize))
        return ptr;
    /* Across classes or across the small/large line: move. On failure the old
     * block stays valid, as lua_Alloc requires. */
    void *n = nsize <= HOST_LUA_HEAP_SMALL ? small_alloc(h, nsize) : malloc(nsize);
    if (n == NULL)
        return NULL;
    memcpy(n, ptr, osize < nsize ? osize : nsize);
    if (was_small)
        small_free(h, ptr, osize);
    else
        free(ptr);
    return n;
}

void host_lua_heap_free(host_lua_heap_t *heap)
{
    if (heap == NULL)
        return;
    slab_t *s = heap->slabs;
    while (s != NULL) {
        slab_t *next = s->next;
        free(s);
        s = next;
    }
    free(heap);
}
