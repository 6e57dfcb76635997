/* file_map.h - read-only memory maps of input files for the converters. */
#ifndef LMOE_FILE_MAP_H
#define LMOE_FILE_MAP_H

#include <stddef.h>

#include "llamamoe.h"

typedef struct file_map {
    const unsigned char *data;
    size_t size;
} file_map;

/* Maps the whole file (an empty file gives size 0 and data NULL). Errors name the path. */
lmoe_status file_map_open(const char *path, file_map *out);
void file_map_close(file_map *map);

#endif
