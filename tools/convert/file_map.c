/* file_map.c - see file_map.h. */
#include "file_map.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

lmoe_status file_map_open(const char *path, file_map *out) {
    out->data = NULL;
    out->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    RETURN_ERROR_IF(fd < 0, LMOE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return lmoe_error(LMOE_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int err = errno;
            close(fd);
            return lmoe_error(LMOE_ERR_IO, "%s: cannot map: %s", path, strerror(err));
        }
        out->data = p;
        out->size = (size_t)st.st_size;
    }
    close(fd);
    return LMOE_OK;
}

void file_map_close(file_map *map) {
    if (map->data) munmap((void *)map->data, map->size);
    map->data = NULL;
    map->size = 0;
}
