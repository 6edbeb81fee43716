// Does this compiler keep the stores that fill an AMX tile configuration before ldtilecfg?
//
//   g++ -O2 -march=sapphirerapids -c config_site.cpp      (the function below, alone in its file, as in ggml)
//   g++ -O1 -march=sapphirerapids amx_tile_config.cpp config_site.o -o amx_tile_config && ./amx_tile_config
//
// On a CPU with AMX, "as compiled" dies (SIGILL here, SIGSEGV inside llama.cpp) where the compiler dropped the stores;
// "stores kept" computes 16 x 16 x 32 ones and prints 32. See amx-tile-config.md.
#include <immintrin.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

// The 64-byte operand of ldtilecfg (Intel SDM vol. 2, LDTILECFG), with default member initializers as ggml declares it.
struct TileConfig {
    uint8_t palette = 0;
    uint8_t first_row = 0;
    uint8_t zero[14] = {0};
    uint16_t bytes_per_row[16] = {0};
    uint8_t rows[16] = {0};
};

#ifdef CONFIG_SITE
// ggml-cpu/amx/mmq.cpp's shape: a local config, eight tiles set field by field, then _tile_loadconfig.
void load_config_as_compiled() {
    alignas(64) TileConfig cfg = {};
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = t < 2 ? 8 : 16;
        cfg.bytes_per_row[t] = (t == 2 || t == 3) ? 32 : 64;
    }
    _tile_loadconfig(&cfg);
}
#else
void load_config_as_compiled();

static void load_config_with_stores_kept() {
    alignas(64) static TileConfig cfg;
    volatile uint8_t *raw = reinterpret_cast<volatile uint8_t *>(&cfg);
    for (int i = 0; i < 64; i++) raw[i] = 0;
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = t < 2 ? 8 : 16;
        cfg.bytes_per_row[t] = (t == 2 || t == 3) ? 32 : 64;
    }
    __asm__ volatile("" ::: "memory");
    _tile_loadconfig(&cfg);
}

static void try_one(const char *name, void (*load)()) {
    fflush(stdout);
    if (fork() == 0) {
        load();
        alignas(64) static int8_t a[16 * 32], b[8 * 64];
        alignas(64) static int32_t c[16 * 16];
        memset(a, 1, sizeof a);
        memset(b, 1, sizeof b);
        _tile_zero(4);
        _tile_loadd(2, a, 32);
        _tile_loadd(0, b, 64);
        _tile_dpbssd(4, 2, 0);
        _tile_stored(4, c, 64);
        _tile_release();
        printf("%s: c[0] = %d (32 expected)\n", name, c[0]);
        _exit(0);
    }
    int status;
    wait(&status);
    if (WIFSIGNALED(status)) printf("%s: killed by signal %d\n", name, WTERMSIG(status));
}

int main() {
    printf("arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) = %ld\n", syscall(SYS_arch_prctl, 0x1023, 18));
    try_one("as compiled", load_config_as_compiled);
    try_one("stores kept", load_config_with_stores_kept);
}
#endif
