/* mmap: 1 MiB patterned file mapped PROT_READ/MAP_PRIVATE (checksum),
 * copy-on-write MAP_PRIVATE|PROT_WRITE on an O_RDONLY fd (file unchanged),
 * MAP_SHARED on O_RDONLY with PROT_WRITE (EACCES), MAP_SHARED writes visible
 * through read(2), mappings that outlive close(2), offsets and EOF. */
#include "probe.h"
#include <sys/mman.h>

#define SIZE (1024 * 1024)

static unsigned char pattern(size_t i)
{
    return (unsigned char)((i * 7) ^ (i >> 12));
}

/* FNV-1a 32 bit */
static unsigned fnv(const unsigned char *p, size_t n)
{
    unsigned h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static unsigned file_hash(const char *path, ssize_t *len)
{
    static unsigned char buf[SIZE + 1];
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        die("open %s", path);
    ssize_t got = 0, n;
    while ((n = read(fd, buf + got, sizeof buf - (size_t)got)) > 0)
        got += n;
    close(fd);
    *len = got;
    return fnv(buf, (size_t)got);
}

int main(int argc, char **argv)
{
    probe_init(argc, argv);
    long pg = sysconf(_SC_PAGESIZE);

    unsigned char *src = malloc(SIZE);
    if (!src)
        die("malloc");
    for (size_t i = 0; i < SIZE; i++)
        src[i] = pattern(i);
    unsigned expected = fnv(src, SIZE);
    out("pattern.hash", "%08x", expected);

    int fd = open("pattern.bin", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die("create pattern.bin");
    for (size_t off = 0; off < SIZE; off += 65536)
        if (write(fd, src + off, 65536) != 65536)
            die("write pattern");
    close(fd);

    /* read-only private mapping of a read-only fd */
    fd = open("pattern.bin", O_RDONLY);
    val("open.rdonly", fd);
    unsigned char *m = mmap(NULL, SIZE, PROT_READ, MAP_PRIVATE, fd, 0);
    out("mmap.ro_private", "%s", m == MAP_FAILED ? errname(errno) : "ok");
    if (m != MAP_FAILED) {
        out("mmap.ro_private.hash", "%08x", fnv(m, SIZE));
        out("mmap.ro_private.matches_pattern", "%s", yesno(memcmp(m, src, SIZE) == 0));
        out("mmap.ro_private.byte_777777", "%02x", m[777777]);
        res("munmap.ro_private", munmap(m, SIZE));
    }

    /* copy-on-write: PROT_WRITE|MAP_PRIVATE on the O_RDONLY fd */
    m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    out("mmap.cow", "%s", m == MAP_FAILED ? errname(errno) : "ok");
    if (m != MAP_FAILED) {
        memset(m, 'Z', 4096);
        m[SIZE - 1] = 'E';
        out("mmap.cow.memory_modified", "%s", yesno(m[0] == 'Z' && m[4095] == 'Z' && m[SIZE - 1] == 'E'));
        out("mmap.cow.memory_hash", "%08x", fnv(m, SIZE));
        unsigned char b[4];
        ssize_t n = pread(fd, b, 1, 0);
        out("mmap.cow.file_byte0_unchanged", "%s", yesno(n == 1 && b[0] == pattern(0)));
        res("msync.cow", msync(m, SIZE, MS_SYNC));
        res("munmap.cow", munmap(m, SIZE));
    }
    ssize_t len;
    unsigned h = file_hash("pattern.bin", &len);
    out("file.after_cow", "len=%zd hash=%08x unchanged=%s", len, h, yesno(h == expected));

    /* shared writable mapping of a read-only fd is refused */
    m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    out("mmap.shared_write_on_rdonly", "%s", m == MAP_FAILED ? errname(errno) : "ok");
    if (m != MAP_FAILED)
        munmap(m, SIZE);

    /* offset mapping, mapping kept after close */
    m = mmap(NULL, (size_t)pg, PROT_READ, MAP_PRIVATE, fd, 3 * pg);
    out("mmap.offset_3_pages", "%s", m == MAP_FAILED ? errname(errno) : "ok");
    close(fd);
    if (m != MAP_FAILED) {
        out("mmap.offset.first_byte_ok", "%s", yesno(m[0] == pattern((size_t)(3 * pg))));
        out("mmap.offset.readable_after_close", "%s", yesno(fnv(m, (size_t)pg) == fnv(src + 3 * pg, (size_t)pg)));
        munmap(m, (size_t)pg);
    }
    m = mmap(NULL, (size_t)pg, PROT_READ, MAP_PRIVATE, fd, 0);
    out("mmap.closed_fd", "%s", m == MAP_FAILED ? errname(errno) : "ok");
    fd = open("pattern.bin", O_RDONLY);
    m = mmap(NULL, (size_t)pg, PROT_READ, MAP_PRIVATE, fd, 1);
    out("mmap.unaligned_offset", "%s", m == MAP_FAILED ? errname(errno) : "ok");
    m = mmap(NULL, 0, PROT_READ, MAP_PRIVATE, fd, 0);
    out("mmap.zero_length", "%s", m == MAP_FAILED ? errname(errno) : "ok");
    close(fd);

    /* small file: the tail of the last page reads as zeros */
    put_file("small.txt", "small file content\n");
    fd = open("small.txt", O_RDONLY);
    m = mmap(NULL, (size_t)pg, PROT_READ, MAP_PRIVATE, fd, 0);
    out("mmap.small", "%s", m == MAP_FAILED ? errname(errno) : "ok");
    if (m != MAP_FAILED) {
        out_bytes("mmap.small.content", (const char *)m, 19);
        int zeros = 1;
        for (long i = 19; i < pg; i++)
            zeros &= m[i] == 0;
        out("mmap.small.tail_zero", "%s", yesno(zeros));
        munmap(m, (size_t)pg);
    }
    close(fd);

    /* shared writable mapping on an O_RDWR fd: writes reach the file */
    put_file("shared.bin", "");
    fd = open("shared.bin", O_RDWR);
    res("ftruncate.shared", ftruncate(fd, 2 * pg));
    m = mmap(NULL, (size_t)(2 * pg), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    out("mmap.shared_rw", "%s", m == MAP_FAILED ? errname(errno) : "ok");
    if (m != MAP_FAILED) {
        memcpy(m, "written via mmap", 16);
        memcpy(m + pg, "second page", 11);
        res("msync.shared", msync(m, (size_t)(2 * pg), MS_SYNC));
        char b[32];
        ssize_t n = pread(fd, b, 16, 0);
        out_read("mmap.shared.pread_page0", n, b);
        n = pread(fd, b, 11, pg);
        out_read("mmap.shared.pread_page1", n, b);
        /* and the other direction: write(2) visible in the mapping */
        n = pwrite(fd, "WRITTEN", 7, 0);
        out("mmap.shared.pwrite", "%zd", n);
        out_bytes("mmap.shared.mapping_after_pwrite", (const char *)m, 16);
        res("munmap.shared", munmap(m, (size_t)(2 * pg)));
    }
    close(fd);
    char b[64];
    ssize_t n = get_file("shared.bin", b, 17);
    out_read("shared.bin.after_unmap", n, b);

    free(src);
    return 0;
}
